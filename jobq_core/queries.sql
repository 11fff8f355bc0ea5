-- The queue's statements, each under a `-- name --` line and described by the comment lines
-- that follow it. What you read is what runs: `{jobs}`, `{events}`, `{keys}`, `{pauses}`,
-- `{channel}`, `{done_channel}` and `{keep_bytes}` are the only placeholders, filled once per
-- queue by `Statements` with identifiers and literals composed by psycopg.sql (a literal
-- brace is written twice); values are always bound parameters, %(name)s, and a literal % is
-- written %%.
--
-- Conventions that hold throughout:
-- - Every transition writes its history row (`{events}`) in the same statement.
-- - Rows are locked in id order (`locked`), so that two statements over the same jobs never
--   deadlock.
-- - A fenced call passes its lease token; an operator's bare id passes NULL and may act on any
--   job that is not dead:
--     (lease_token = %(token)s::uuid
--      OR (%(token)s::uuid IS NULL AND state NOT IN ('failed', 'cancelled')))
-- - Claims, heartbeats and hand-backs of claims are soft state and commit asynchronously (no
--   wait for the WAL flush), by the setting `(SELECT set_config('synchronous_commit', 'off',
--   true)) AS async_commit`, which is local to the statement's own transaction: if a crash
--   loses one, the job is simply back as it was, its old holder's ack fails the lease fence,
--   and the job runs again; nothing is lost or completed twice.
-- - A completed job's payload stays in its history row when it is at most {keep_bytes} bytes
--   as stored; a larger one leaves a note of its size instead.


-- enqueue_plain --
-- Enqueue without a key: nothing can conflict, so the plain insert.
WITH ins AS (
    INSERT INTO {jobs} (type, payload, priority, run_at, request_id)
    VALUES (%(type)s, %(payload)s::jsonb, %(priority)s,
            coalesce(%(run_at)s::timestamptz, now() + %(delay)s::interval, now()),
            %(request_id)s)
    RETURNING id, type, request_id
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id)
    SELECT id, type, 'enqueued', request_id FROM ins
)
SELECT id FROM ins


-- enqueue --
-- A keyed enqueue claims its key first, in {keys} (ON CONFLICT waits for a concurrent holder
-- to commit), and inserts the job and its `enqueued` event only if that succeeded. A key
-- already held gives no row: the caller then looks the holder up with a fresh snapshot
-- (lookup_keys). A live job's key counts as held even without its row in {keys} (the jobs'
-- own unique index would fail the insert). pg_current_xact_id() comes first so that the
-- transaction has its id before any event id is drawn, which the trace follower relies on.
WITH xact AS (
    SELECT pg_current_xact_id()
), held AS (
    INSERT INTO {keys} (key, job_id)
    SELECT %(idempotency_key)s, nextval(pg_get_serial_sequence(%(jobs_name)s, 'id')::regclass)
    FROM xact
    WHERE NOT EXISTS (SELECT 1 FROM {jobs} WHERE idempotency_key = %(idempotency_key)s)
    ON CONFLICT (key) DO NOTHING
    RETURNING job_id
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, idempotency_key)
    SELECT job_id, %(type)s, 'enqueued', %(request_id)s, %(idempotency_key)s FROM held
), ins AS (
    INSERT INTO {jobs} (id, type, payload, priority, run_at, request_id, idempotency_key)
    SELECT job_id, %(type)s, %(payload)s::jsonb, %(priority)s,
           coalesce(%(run_at)s::timestamptz, now() + %(delay)s::interval, now()),
           %(request_id)s, %(idempotency_key)s
    FROM held
    RETURNING id
)
SELECT id FROM ins


-- enqueue_many --
-- The keyed enqueue for a batch. Ids are drawn in input order, so the result maps back to
-- the caller's list; an item whose key repeats an earlier item of the batch gets that item's
-- id.
WITH xact AS (
    SELECT pg_current_xact_id()
), input AS (
    SELECT nextval(pg_get_serial_sequence(%(jobs_name)s, 'id')::regclass) AS id, i.*
    FROM xact,
         unnest(%(types)s::text[], %(payloads)s::jsonb[], %(priorities)s::smallint[],
                %(run_ats)s::timestamptz[], %(delays)s::interval[], %(request_ids)s::text[],
                %(keys)s::text[])
         WITH ORDINALITY AS i(type, payload, priority, run_at, delay, request_id,
                              idempotency_key, ord)
), live AS (
    SELECT idempotency_key FROM {jobs} WHERE idempotency_key = ANY(%(keys)s::text[])
), held AS (
    INSERT INTO {keys} (key, job_id)
    SELECT idempotency_key, id FROM input
    WHERE idempotency_key IS NOT NULL
      AND idempotency_key NOT IN (SELECT idempotency_key FROM live)
    -- Keys are taken in key order, so two batches sharing keys cannot deadlock on them; the
    -- first of a batch's repeats of a key still wins.
    ORDER BY idempotency_key, ord
    ON CONFLICT (key) DO NOTHING
    RETURNING job_id
), taken AS (
    SELECT * FROM input WHERE idempotency_key IS NULL OR id IN (SELECT job_id FROM held)
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, idempotency_key)
    SELECT id, type, 'enqueued', request_id, idempotency_key FROM taken ORDER BY ord
), ins AS (
    INSERT INTO {jobs} (id, type, payload, priority, run_at, request_id, idempotency_key)
    SELECT id, type, payload, priority, coalesce(run_at, now() + delay, now()), request_id,
           idempotency_key
    FROM taken
    RETURNING id, idempotency_key
)
SELECT input.ord, coalesce(ins.id, dup.id)
FROM input
LEFT JOIN ins ON ins.id = input.id
LEFT JOIN ins AS dup ON ins.id IS NULL AND dup.idempotency_key = input.idempotency_key
ORDER BY input.ord


-- reserve_ids --
-- The COPY path for batches without idempotency keys: ids and the transaction's now() first,
-- then both tables by COPY (copy_jobs, copy_enqueued). now() is the same in all three, as in
-- a single statement.
WITH s AS (SELECT pg_get_serial_sequence(%(jobs_name)s, 'id')::regclass AS seq)
SELECT now(), ARRAY(SELECT nextval(s.seq) FROM s, generate_series(1, %(n)s))


-- copy_jobs --
-- The jobs of a batch without keys, with the ids reserve_ids drew.
COPY {jobs} (id, type, payload, priority, run_at, request_id) FROM STDIN


-- copy_enqueued --
-- Their `enqueued` events, in the same transaction.
COPY {events} (job_id, type, event, request_id) FROM STDIN


-- lookup_keys --
-- Who holds each key: its row in {keys}, or a live job.
SELECT key, job_id FROM {keys} WHERE key = ANY(%(keys)s::text[])
UNION ALL
SELECT idempotency_key, id FROM {jobs} WHERE idempotency_key = ANY(%(keys)s::text[])


-- claim_typed --
-- Claim up to %(limit)s jobs of the given types, %(types)s.
--
-- A claim takes expired leases first (their jobs were due earlier), then ready jobs. A
-- reclaimed job gets a new token, so its old holder can no longer ack it, and its event is
-- `recovered`. Paused types are skipped, expired leases included (taking one back would run
-- the job again). A claim locks no row it does not take: a row locked and left is hidden from
-- every concurrent claimer until the claim commits (with 4 types, a per-type LIMIT once locked
-- 20 rows for a batch of 5). The shape (candidate arrays, then UPDATE ... WHERE id = ANY)
-- keeps the generic plan cheap: jobq's own connections run with
-- plan_cache_mode=force_generic_plan, so the claim is never re-planned.
--
-- The batch is shared fairly between the types that have due work. First each gets an equal
-- share, the odd slots going to the first types in turn: the caller advances %(turn)s from
-- claim to claim, and the types take turns to come first, in name order, so one type's
-- backlog cannot starve another's, even one job at a time. What types leave of their share
-- then goes to the others' next jobs, type after type in turn order. Within a type, jobs go in
-- claim order. Both rounds seek each type's range and lock rows as they are taken: no sort sits
-- above a lock, so the leftover round stops locking once the batch is full.
WITH paused AS (
    SELECT type FROM {pauses} WHERE until IS NULL OR until > now()
), given AS (
    -- the claimed types less the paused ones, dropped before any seek: a paused backlog is
    -- never read
    SELECT name FROM unnest(%(types)s::text[]) AS u(name)
    WHERE name NOT IN (SELECT type FROM paused)
), expired AS (
    -- Expired leases: a seek per type on lease_type_idx, the only index of claimed jobs, so
    -- expired leases of types nobody serves any more (a renamed task, a retired fleet) are
    -- never read by the claims of other types. The type is an equality here, unlike the ready
    -- seeks' range: with no other index to fall back on there is no plan to steer away from,
    -- and the equality lets the seek start at the type's oldest lease. Each type's oldest go
    -- first, type after type; rows are locked as they are taken and the walk stops when the
    -- batch is full, so no expired lease is locked for nothing, and one a concurrent claimer
    -- holds is passed by for the next.
    SELECT e.id
    FROM given AS t CROSS JOIN LATERAL (
        SELECT id FROM {jobs}
        WHERE state = 'claimed' AND type = t.name AND lease_until < now()
        ORDER BY lease_until, id LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED) AS e
    LIMIT %(limit)s
), active AS (
    -- the types with a due job, by a seek each, numbered in turn order from 0; a claim of one
    -- type needs no such seek (its share seek finds the same), and no leftover round
    SELECT name, (row_number() OVER (ORDER BY name) - 1 + %(turn)s) %% count(*) OVER () AS turn,
           count(*) OVER () AS k
    FROM given
    WHERE (SELECT count(*) FROM given) = 1
       OR EXISTS (SELECT FROM {jobs} WHERE state = 'pending' AND type >= given.name
                  AND type <= given.name AND run_at <= now())
    ORDER BY 2
), share AS (
    -- each type's share of what expired leases left of the batch
    SELECT r.id FROM (
        SELECT name, w.n / k + (turn < w.n %% k)::int AS quota
        FROM active, (SELECT (%(limit)s - (SELECT count(*) FROM expired)) AS n) AS w
        WHERE turn < w.n
    ) AS t
    CROSS JOIN LATERAL (
        -- One type's due jobs, in claim order, the first that no one else holds: a seek the
        -- planner cannot turn into a walk of other types' backlog, whatever the statistics.
        -- The type reaches the planner through unnest, so it cannot see how rare a type is,
        -- and with `ORDER BY priority DESC, run_at, id` it may walk ready_idx in claim order,
        -- filtering on type: behind a backlog of other types that read 1M rows per claim
        -- (194 ms, tests/test_claim_plan.py). An equality on type would make ordering by type
        -- redundant to the planner, so type is bounded as a closed range and ordered first:
        -- an order only ready_type_idx gives.
        SELECT id, priority, run_at FROM {jobs}
        WHERE state = 'pending' AND type >= t.name AND type <= t.name AND run_at <= now()
        ORDER BY type, priority DESC, run_at, id LIMIT t.quota
        FOR UPDATE SKIP LOCKED
    ) AS r
), rest AS (
    -- what the shares left, to the other types' next jobs, by the same seek
    SELECT r.id FROM active AS t
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at FROM {jobs}
        WHERE state = 'pending' AND type >= t.name AND type <= t.name AND run_at <= now()
          AND id <> ALL(ARRAY(SELECT id FROM share))
        ORDER BY type, priority DESC, run_at, id
        LIMIT (%(limit)s - (SELECT count(*) FROM expired)) - (SELECT count(*) FROM share)
        FOR UPDATE SKIP LOCKED
    ) AS r
    WHERE t.k > 1
    LIMIT (%(limit)s - (SELECT count(*) FROM expired)) - (SELECT count(*) FROM share)
), ready AS (
    SELECT id FROM share UNION ALL SELECT id FROM rest
), upd AS (
    UPDATE {jobs} SET
        state = 'claimed',
        attempts = attempts + 1,
        lease_token = gen_random_uuid(),
        lease_until = now() + %(lease_ms)s * interval '1 millisecond',
        lease_ms = %(lease_ms)s,
        claimed_by = %(worker)s,
        claimed_at = now()
    WHERE id = ANY((ARRAY(SELECT id FROM expired) || ARRAY(SELECT id FROM ready))[1:%(limit)s])
    RETURNING *
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker)
    SELECT id, type,
           CASE WHEN id IN (SELECT id FROM expired) THEN 'recovered' ELSE 'claimed' END,
           request_id, attempts, claimed_by
    FROM upd
)
SELECT id, type, payload, priority, run_at, attempts, request_id, idempotency_key,
       lease_token, lease_until, claimed_by, created_at
FROM upd, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
ORDER BY priority DESC, run_at, id


-- claim_any --
-- Claim up to %(limit)s jobs of any type: expired leases first, then ready jobs in claim order
-- across all types (see claim_typed for what every claim holds to).
--
-- One walk of the ready index while no type is paused. While some type is, reading past its
-- backlog could cost a scan of millions of rows, so the claim instead finds the types with
-- pending jobs by a loose index scan and seeks each unpaused one, as a typed claim does. The
-- seeks only choose, four times the batch so that claimers choosing alike still fill theirs;
-- rows are then locked by id in claim order until the batch is full. Each branch is gated by a
-- one-time filter: only one runs.
WITH paused AS (
    SELECT type FROM {pauses} WHERE until IS NULL OR until > now()
), given AS (
    -- the claimed types, by a loose index scan (a seek per type), less the paused ones, for
    -- the expired-lease seeks
    WITH RECURSIVE claimed_types AS (
        (SELECT type FROM {jobs} WHERE state = 'claimed' ORDER BY type LIMIT 1)
        UNION ALL
        SELECT (SELECT type FROM {jobs} WHERE state = 'claimed' AND type > c.type
                ORDER BY type LIMIT 1)
        FROM claimed_types AS c WHERE c.type IS NOT NULL
    )
    SELECT type AS name FROM claimed_types
    WHERE type IS NOT NULL AND type NOT IN (SELECT type FROM paused)
), expired AS (
    -- as in claim_typed: a seek per claimed type on lease_type_idx
    SELECT e.id
    FROM given AS t CROSS JOIN LATERAL (
        SELECT id FROM {jobs}
        WHERE state = 'claimed' AND type = t.name AND lease_until < now()
        ORDER BY lease_until, id LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED) AS e
    LIMIT %(limit)s
), ready_unpaused AS (
    SELECT id FROM {jobs}
    WHERE state = 'pending' AND run_at <= now() AND NOT EXISTS (SELECT 1 FROM paused)
    ORDER BY priority DESC, run_at, id LIMIT (%(limit)s - (SELECT count(*) FROM expired))
    FOR UPDATE SKIP LOCKED
), ready_around_paused AS (
    WITH RECURSIVE pending_types AS (
        (SELECT type FROM {jobs} WHERE state = 'pending' ORDER BY type LIMIT 1)
        UNION ALL
        SELECT (SELECT type FROM {jobs} WHERE state = 'pending' AND type > p.type
                ORDER BY type LIMIT 1)
        FROM pending_types AS p WHERE p.type IS NOT NULL
    )
    SELECT j.id
    FROM (SELECT r.id
          FROM (SELECT type AS name FROM pending_types
                WHERE type IS NOT NULL AND type NOT IN (SELECT type FROM paused)) AS t
          CROSS JOIN LATERAL (
              -- each type's due jobs in claim order, by its own range (see claim_typed)
              SELECT id, priority, run_at FROM {jobs}
              WHERE state = 'pending' AND type >= t.name AND type <= t.name
                AND run_at <= now()
              ORDER BY type, priority DESC, run_at, id
              LIMIT 4 * (%(limit)s - (SELECT count(*) FROM expired))
          ) AS r
          WHERE EXISTS (SELECT 1 FROM paused)
          ORDER BY r.priority DESC, r.run_at, r.id
          LIMIT 4 * (%(limit)s - (SELECT count(*) FROM expired))) AS c
    CROSS JOIN LATERAL (
        -- Chosen rows are locked one by one, each by its primary key: an equality that no
        -- partial index of a state serves, so no plan walks one, whatever the statistics. (A
        -- claim never waits for a lock, SKIP LOCKED, so the order it locks in cannot
        -- deadlock.) The conditions that chose a row are checked again on its newest version
        -- once locked: a row a concurrent claimer took after this statement's snapshot is
        -- left alone.
        SELECT id FROM {jobs}
        WHERE id = c.id AND state = 'pending' AND run_at <= now()
        FOR UPDATE SKIP LOCKED) AS j
    LIMIT (%(limit)s - (SELECT count(*) FROM expired))
), ready AS (
    SELECT id FROM ready_unpaused UNION ALL SELECT id FROM ready_around_paused
), upd AS (
    UPDATE {jobs} SET
        state = 'claimed',
        attempts = attempts + 1,
        lease_token = gen_random_uuid(),
        lease_until = now() + %(lease_ms)s * interval '1 millisecond',
        lease_ms = %(lease_ms)s,
        claimed_by = %(worker)s,
        claimed_at = now()
    WHERE id = ANY((ARRAY(SELECT id FROM expired) || ARRAY(SELECT id FROM ready))[1:%(limit)s])
    RETURNING *
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker)
    SELECT id, type,
           CASE WHEN id IN (SELECT id FROM expired) THEN 'recovered' ELSE 'claimed' END,
           request_id, attempts, claimed_by
    FROM upd
)
SELECT id, type, payload, priority, run_at, attempts, request_id, idempotency_key,
       lease_token, lease_until, claimed_by, created_at
FROM upd, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
ORDER BY priority DESC, run_at, id


-- complete --
-- Finish one job, fenced: it leaves the queue, and its `completed` event keeps the result
-- (and the payload, up to {keep_bytes} bytes). A waiter is told on the done channel.
WITH del AS (
    DELETE FROM {jobs} WHERE id = %(id)s AND (lease_token = %(token)s::uuid
        OR (%(token)s::uuid IS NULL AND state NOT IN ('failed', 'cancelled')))
    RETURNING id, type, request_id, attempts, claimed_by, idempotency_key, has_waiters, payload
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker, result,
                          idempotency_key, payload)
    SELECT id, type, 'completed', request_id, attempts, claimed_by, %(result)s::jsonb,
           idempotency_key,
           CASE WHEN payload IS NULL THEN NULL
                WHEN pg_column_size(payload) <= {keep_bytes} THEN payload
                ELSE jsonb_build_object('jobq_payload_not_kept', pg_column_size(payload)) END
    FROM del
)
SELECT id, CASE WHEN has_waiters THEN pg_notify({done_channel}, id::text)::text END
FROM del


-- complete_many --
-- Complete many claimed jobs in one statement, each fenced by its token; returns the ids
-- whose lease held.
--
-- Rows are locked in id order first (`locked`). The change then joins `locked`, which carries
-- the caller's values, and never the input array again: the generic plan guesses 10 rows for
-- an unnest and joined it by a nested loop, n x n rows (a batch of 1,000 acks read 1M rows,
-- 130 ms; tests/test_batch_plan.py).
WITH acks AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(results)s::jsonb[])
        AS a(id, token, result)
), locked AS (
    SELECT j.id, acks.token, acks.result
    FROM {jobs} AS j JOIN acks ON j.id = acks.id AND j.lease_token = acks.token
    ORDER BY j.id FOR UPDATE OF j
), del AS (
    DELETE FROM {jobs} AS j USING locked AS l
    WHERE j.id = l.id AND j.lease_token = l.token
    RETURNING j.id, j.type, j.request_id, j.attempts, j.claimed_by, j.idempotency_key,
              j.has_waiters, l.result, j.payload
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker, result,
                          idempotency_key, payload)
    SELECT id, type, 'completed', request_id, attempts, claimed_by, result, idempotency_key,
           CASE WHEN payload IS NULL THEN NULL
                WHEN pg_column_size(payload) <= {keep_bytes} THEN payload
                ELSE jsonb_build_object('jobq_payload_not_kept', pg_column_size(payload)) END
    FROM del
)
SELECT id, CASE WHEN has_waiters THEN pg_notify({done_channel}, id::text)::text END
FROM del


-- fail --
-- Record a failure, fenced. With %(retry)s the job is pending again at run_at (now by
-- default) and its event is `retried`; otherwise it is dead, kept for inspection, and its
-- event is `failed`. A retry due now wakes the claimers; a final failure wakes its waiters.
WITH upd AS (
    UPDATE {jobs} SET
        state = CASE WHEN %(retry)s THEN 'pending' ELSE 'failed' END,
        run_at = CASE WHEN %(retry)s
                      THEN coalesce(%(run_at)s::timestamptz, now() + %(delay)s::interval, now())
                      ELSE run_at END,
        failed_at = CASE WHEN %(retry)s THEN NULL ELSE now() END,
        last_error = %(reason)s,
        lease_token = NULL,
        lease_until = NULL
    WHERE id = %(id)s AND (lease_token = %(token)s::uuid
        OR (%(token)s::uuid IS NULL AND state NOT IN ('failed', 'cancelled')))
    RETURNING id, type, state, run_at, request_id, attempts, claimed_by, has_waiters
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker, reason)
    SELECT id, type, CASE WHEN state = 'pending' THEN 'retried' ELSE 'failed' END,
           request_id, attempts, claimed_by, %(reason)s
    FROM upd
)
SELECT id,
       CASE WHEN state = 'pending' AND run_at <= now() THEN pg_notify({channel}, '')::text END,
       CASE WHEN state = 'failed' AND has_waiters
            THEN pg_notify({done_channel}, id::text)::text END
FROM upd


-- extend --
-- The lease ends at least `lease_ms` from now; an extend never shortens a lease.
WITH upd AS (
    UPDATE {jobs} SET
        lease_until = greatest(lease_until, now() + %(lease_ms)s * interval '1 millisecond')
    WHERE id = %(id)s AND state = 'claimed'
      AND (lease_token = %(token)s::uuid OR %(token)s::uuid IS NULL)
    RETURNING id, type, request_id, attempts, claimed_by, lease_until
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker, reason)
    SELECT id, type, 'extended', request_id, attempts, claimed_by,
           'lease until ' || lease_until::text
    FROM upd
)
SELECT lease_until FROM upd


-- job_state --
-- Why a fenced call changed nothing: the job's state and token now (no row: it is gone).
SELECT state, lease_token FROM {jobs} WHERE id = %(id)s


-- acked --
-- Which of these attempts did complete: after an ack whose connection broke, the outcome is
-- unknown, and a claim's attempt number names it (a reclaim would have raised it).
SELECT e.job_id FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS a(id, attempt)
JOIN {events} AS e ON e.job_id = a.id AND e.event = 'completed' AND e.attempt = a.attempt


-- heartbeat --
-- A runner's heartbeat: one statement for every lease it holds, locked in id order. It never
-- shortens a lease (ctx.extend may have lengthened one) and, not being a transition, writes
-- no history.
WITH beats AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(ms)s::integer[])
        AS h(id, token, ms)
), locked AS (
    SELECT j.id, h.token, h.ms
    FROM {jobs} AS j JOIN beats AS h ON j.id = h.id AND j.lease_token = h.token
    ORDER BY j.id FOR UPDATE OF j
), upd AS (
    UPDATE {jobs} AS j
    SET lease_until = greatest(j.lease_until, now() + h.ms * interval '1 millisecond'),
        lease_ms = h.ms
    FROM locked AS h
    WHERE j.id = h.id AND j.lease_token = h.token
    RETURNING j.id
)
SELECT id FROM upd, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit


-- release --
-- Shutdown hands unfinished jobs back: pending again, in their old place, at no attempt cost.
-- It commits durably: a hand-back lost in a crash would cost the job an attempt.
WITH hand AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS r(id, token)
), locked AS (
    SELECT j.id, r.token
    FROM {jobs} AS j JOIN hand AS r ON j.id = r.id AND j.lease_token = r.token
    ORDER BY j.id FOR UPDATE OF j
), upd AS (
    UPDATE {jobs} AS j SET
        state = 'pending',
        attempts = greatest(j.attempts - 1, 0),
        lease_token = NULL,
        lease_until = NULL
    FROM locked AS r
    WHERE j.id = r.id AND j.lease_token = r.token
    RETURNING j.id, j.type, j.request_id, j.attempts, j.claimed_by
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker, reason)
    SELECT id, type, 'released', request_id, attempts, claimed_by, %(reason)s FROM upd
)
SELECT id, pg_notify({channel}, '')::text FROM upd


-- claim_by_id --
-- Claim one given job, if it is due or its lease expired (inline runs).
WITH cur AS (
    SELECT id, state FROM {jobs}
    WHERE id = %(id)s AND ((state = 'pending' AND run_at <= now())
                           OR (state = 'claimed' AND lease_until < now()))
    FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE {jobs} AS j SET
        state = 'claimed',
        attempts = j.attempts + 1,
        lease_token = gen_random_uuid(),
        lease_until = now() + %(lease_ms)s * interval '1 millisecond',
        lease_ms = %(lease_ms)s,
        claimed_by = %(worker)s,
        claimed_at = now()
    FROM cur WHERE j.id = cur.id
    RETURNING j.*, cur.state = 'claimed' AS recovered
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker)
    SELECT id, type, CASE WHEN recovered THEN 'recovered' ELSE 'claimed' END,
           request_id, attempts, claimed_by
    FROM upd
)
SELECT id, type, payload, priority, run_at, attempts, request_id, idempotency_key,
       lease_token, lease_until, claimed_by, created_at
FROM upd, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit


-- outcome --
-- Where a job stands: live (state), failed (reason) or completed (result). A read: it writes
-- nothing.
WITH live AS (
    SELECT state, last_error FROM {jobs} WHERE id = %(id)s
)
SELECT state, NULL::jsonb, last_error FROM live
UNION ALL
(SELECT 'completed', result, NULL FROM {events}
 WHERE job_id = %(id)s AND event = 'completed' AND NOT EXISTS (SELECT 1 FROM live)
 ORDER BY id DESC LIMIT 1)


-- outcome_armed --
-- The same for a waiter: a live job is also marked so that its completion or final failure
-- sends a NOTIFY. The mark is written once; later calls only read. Marking locks the row, and
-- a claim meanwhile skips it (SKIP LOCKED) and may find nothing else: so marking a due job
-- NOTIFYs the queue's channel, as its enqueue did, and claimers look again.
WITH armed AS (
    UPDATE {jobs} SET has_waiters = true WHERE id = %(id)s AND NOT has_waiters
    RETURNING state, last_error,
              CASE WHEN state = 'pending' AND run_at <= now()
                   THEN pg_notify({channel}, '') END AS woke
), live AS (
    SELECT state, last_error FROM armed
    UNION ALL
    SELECT state, last_error FROM {jobs}
    WHERE id = %(id)s AND has_waiters AND NOT EXISTS (SELECT 1 FROM armed)
)
SELECT state, NULL::jsonb, last_error FROM live
UNION ALL
(SELECT 'completed', result, NULL FROM {events}
 WHERE job_id = %(id)s AND event = 'completed' AND NOT EXISTS (SELECT 1 FROM live)
 ORDER BY id DESC LIMIT 1)


-- pending_any --
-- How many jobs a claim could take now: due pending jobs and expired leases, of any type.
SELECT (SELECT count(*) FROM {jobs}
        WHERE state = 'pending' AND run_at <= now())
     + (SELECT count(*) FROM {jobs}
        WHERE state = 'claimed' AND lease_until < now())


-- pending_typed --
-- The same for the types %(types)s.
SELECT (SELECT count(*) FROM {jobs}
        WHERE state = 'pending' AND run_at <= now() AND type = ANY(%(types)s::text[]))
     + (SELECT count(*) FROM {jobs}
        WHERE state = 'claimed' AND lease_until < now() AND type = ANY(%(types)s::text[]))

-- jobq's statements, each under a `-- name --` line and described by the comment lines that
-- follow it (the loader strips them). What you read is what runs, less comment lines, which
-- are not sent but in a dollar-quoted function body. Values are always bound parameters,
-- %(name)s (a literal % is written %%). Names in braces are filled once per queue by
-- `sql.Statements`, composed by psycopg.sql (a literal brace is written twice): the tables
-- ({jobs}, {events}, {keys}, {pauses}, {workers}, {rates}, {schedules}, {limits},
-- {limit_keys}, {limit_lanes}, {migrations}), the functions ({notify_fn}, {ahead_fn},
-- {free_keys_fn}, {retire_fn}, {limits_fn}), the indexes and constraints by
-- their key in `sql._LOCAL_NAMES`, the channels ({channel}, {done_channel}), {keep_bytes},
-- and for the schema's statements {states}, {events_list}, the names as text ({jobs_text},
-- {events_text}, {ahead_text}), {concurrently}, and version 7's and the upstream layout's
-- own names. Lines of comment before a name (the section heads) belong to no statement.
--
-- Conventions that hold throughout:
-- - Every transition writes its history row (`{events}`) in the same statement.
-- - Rows are locked in id order (`locked`), so that two statements over the same jobs never
--   deadlock.
-- - A fenced call passes its lease token; an operator's bare id passes NULL and may act on any
--   job that is not dead:
--     (lease_token = %(token)s::uuid
--      OR (%(token)s::uuid IS NULL AND state NOT IN ('failed', 'cancelled')))
-- - Claims and heartbeats are soft state and commit asynchronously (no wait for the WAL
--   flush), by the setting `(SELECT set_config('synchronous_commit', 'off', true)) AS
--   async_commit`, which is local to the statement's own transaction: if a crash loses one,
--   the job is simply back as it was, its old holder's ack fails the lease fence, and the job
--   runs again; nothing is lost or completed twice.
-- - A completed job's payload stays in its history row when it is at most {keep_bytes} bytes
--   as stored; a larger one leaves a note of its size instead.


-- enqueue_plain --
-- Enqueue without a key: nothing can conflict, so the plain insert. Every enqueue stores the
-- producer's W3C trace context (NULL without one) on the job and its `enqueued` event.
WITH ins AS (
    INSERT INTO {jobs} (type, payload, priority, run_at, request_id, concurrency_key,
                        traceparent, tracestate)
    VALUES (%(type)s, %(payload)s::jsonb, %(priority)s,
            coalesce(%(run_at)s::timestamptz, now() + %(delay)s::interval, now()),
            %(request_id)s, %(concurrency_key)s, %(traceparent)s, %(tracestate)s)
    RETURNING id, type, request_id, traceparent, tracestate
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, traceparent, tracestate)
    SELECT id, type, 'enqueued', request_id, traceparent, tracestate FROM ins
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
    INSERT INTO {events} (job_id, type, event, request_id, idempotency_key, traceparent,
                          tracestate)
    SELECT job_id, %(type)s, 'enqueued', %(request_id)s, %(idempotency_key)s, %(traceparent)s,
           %(tracestate)s
    FROM held
), ins AS (
    INSERT INTO {jobs} (id, type, payload, priority, run_at, request_id, idempotency_key,
                        concurrency_key, traceparent, tracestate)
    SELECT job_id, %(type)s, %(payload)s::jsonb, %(priority)s,
           coalesce(%(run_at)s::timestamptz, now() + %(delay)s::interval, now()),
           %(request_id)s, %(idempotency_key)s, %(concurrency_key)s, %(traceparent)s,
           %(tracestate)s
    FROM held
    RETURNING id
)
SELECT id FROM ins


-- enqueue_many --
-- The keyed enqueue for a batch. Ids are drawn in input order, so the result maps back to
-- the caller's list; an item whose key repeats an earlier item of the batch gets that item's
-- id. The batch shares one producer, so one trace context.
WITH xact AS (
    SELECT pg_current_xact_id()
), input AS (
    SELECT nextval(pg_get_serial_sequence(%(jobs_name)s, 'id')::regclass) AS id, i.*
    FROM xact,
         unnest(%(types)s::text[], %(payloads)s::jsonb[], %(priorities)s::smallint[],
                %(run_ats)s::timestamptz[], %(delays)s::interval[], %(request_ids)s::text[],
                %(keys)s::text[], %(concurrency_keys)s::text[])
         WITH ORDINALITY AS i(type, payload, priority, run_at, delay, request_id,
                              idempotency_key, concurrency_key, ord)
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
    INSERT INTO {events} (job_id, type, event, request_id, idempotency_key, traceparent,
                          tracestate)
    SELECT id, type, 'enqueued', request_id, idempotency_key, %(traceparent)s, %(tracestate)s
    FROM taken ORDER BY ord
), ins AS (
    INSERT INTO {jobs} (id, type, payload, priority, run_at, request_id, idempotency_key,
                        concurrency_key, traceparent, tracestate)
    SELECT id, type, payload, priority, coalesce(run_at, now() + delay, now()), request_id,
           idempotency_key, concurrency_key, %(traceparent)s, %(tracestate)s
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
COPY {jobs} (id, type, payload, priority, run_at, request_id, concurrency_key, traceparent,
              tracestate) FROM STDIN


-- copy_enqueued --
-- Their `enqueued` events, in the same transaction.
COPY {events} (job_id, type, event, request_id, traceparent, tracestate) FROM STDIN


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
), lim AS MATERIALIZED (
    -- The given types' limits ({limits_fn}): per type, a lane of its limits locked until this
    -- claim commits, so that claims in one lane follow each other, and what the lane leaves
    -- free, read after the lock. No row for a type without limits.
    SELECT * FROM {limits_fn}(ARRAY(SELECT name FROM given))
), open AS (
    -- the given types whose ready jobs a claim may take now: no limit, or one not reached
    SELECT g.name, l.cap, l.key_field, l.full_keys
    FROM given AS g LEFT JOIN lim AS l ON l.type = g.name
    WHERE l.cap IS NULL OR l.cap > 0
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
    SELECT name, cap, key_field, full_keys,
           (row_number() OVER (ORDER BY name) - 1 + %(turn)s) %% count(*) OVER () AS turn,
           count(*) OVER () AS k
    FROM open
    WHERE (SELECT count(*) FROM open) = 1
       OR EXISTS (SELECT FROM {jobs} WHERE state = 'pending' AND type >= open.name
                  AND type <= open.name AND run_at <= now())
    ORDER BY 5
), share AS (
    -- each type's share of what expired leases left of the batch, within its limit
    SELECT r.id, t.name AS type, r.key, r.priority, r.run_at FROM (
        SELECT name, key_field, full_keys, least(w.n / k + (turn < w.n %% k)::int, cap) AS quota
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
        -- an order only ready_type_idx gives. A key-limited type passes over the jobs of
        -- keys whose slots are all taken.
        SELECT id, priority, run_at,
               coalesce(concurrency_key, payload ->> t.key_field, '') AS key
        FROM {jobs}
        WHERE state = 'pending' AND type >= t.name AND type <= t.name AND run_at <= now()
          AND (t.full_keys IS NULL
               OR coalesce(concurrency_key, payload ->> t.key_field, '') <> ALL(t.full_keys))
        ORDER BY type, priority DESC, run_at, id LIMIT t.quota
        FOR UPDATE SKIP LOCKED
    ) AS r
), rest AS (
    -- what the shares left, to the other types' next jobs, by the same seek, each type
    -- within what its limit left
    SELECT r.id, t.name AS type, r.key, r.priority, r.run_at FROM active AS t
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at,
               coalesce(concurrency_key, payload ->> t.key_field, '') AS key
        FROM {jobs}
        WHERE state = 'pending' AND type >= t.name AND type <= t.name AND run_at <= now()
          AND id <> ALL(ARRAY(SELECT id FROM share))
          AND (t.full_keys IS NULL
               OR coalesce(concurrency_key, payload ->> t.key_field, '') <> ALL(t.full_keys))
        ORDER BY type, priority DESC, run_at, id
        LIMIT least((%(limit)s - (SELECT count(*) FROM expired)) - (SELECT count(*) FROM share),
                    CASE WHEN t.cap IS NOT NULL
                         THEN t.cap - (SELECT count(*) FROM share WHERE share.type = t.name) END)
        FOR UPDATE SKIP LOCKED
    ) AS r
    WHERE t.k > 1
    LIMIT (%(limit)s - (SELECT count(*) FROM expired)) - (SELECT count(*) FROM share)
), ready AS (
    SELECT * FROM share UNION ALL SELECT * FROM rest
), kept AS (
    -- Of a key-limited type, each key's first jobs in claim order, as many as its free
    -- slots in the lane: the seeks kept out full keys, not two jobs of a key with one slot
    -- left. (The rows left stay locked until this claim commits, then go back.)
    SELECT id FROM ready
    WHERE NOT EXISTS (SELECT FROM lim WHERE key_limit IS NOT NULL OR key_rate_count IS NOT NULL)
    UNION ALL
    SELECT id FROM (
        SELECT r.id,
               least(l.key_limit - coalesce((l.key_used ->> r.key)::int, 0),
                     floor(coalesce((l.key_tokens ->> r.key)::float8, l.key_rate_burst))::int)
                   AS key_free,
               row_number() OVER (PARTITION BY r.type, r.key
                                  ORDER BY r.priority DESC, r.run_at, r.id) AS nth
        FROM ready AS r LEFT JOIN lim AS l ON l.type = r.type
        WHERE EXISTS (SELECT FROM lim WHERE key_limit IS NOT NULL OR key_rate_count IS NOT NULL)
    ) AS x
    WHERE key_free IS NULL OR nth <= key_free
), upd AS (
    UPDATE {jobs} AS j SET
        state = 'claimed',
        attempts = j.attempts + 1,
        lease_token = gen_random_uuid(),
        lease_until = now() + %(lease_ms)s * interval '1 millisecond',
        lease_ms = %(lease_ms)s,
        claimed_by = %(worker)s,
        claimed_at = now(),
        -- a ready job takes its slot in the claim's lane; one taken back keeps its own
        limit_lane = CASE WHEN j.state = 'claimed' THEN j.limit_lane
                          ELSE (SELECT lim.lane FROM lim WHERE lim.type = j.type) END
    WHERE j.id = ANY((ARRAY(SELECT id FROM expired) || ARRAY(SELECT id FROM kept))[1:%(limit)s])
    RETURNING j.*
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker)
    SELECT id, type,
           CASE WHEN id IN (SELECT id FROM expired) THEN 'recovered' ELSE 'claimed' END,
           request_id, attempts, claimed_by
    FROM upd
), spent AS (
    -- A rate's tokens in the lane, less the jobs this claim started (a job taken back from a
    -- dead holder started before, and spends none). An upsert, not an UPDATE: the lane's row
    -- may be newer than this statement's snapshot (made by a registration this claim waited
    -- for), which an UPDATE would not find; ON CONFLICT finds it, locked by this claim.
    INSERT INTO {limit_lanes} AS n (type, lane, tokens, refilled_at)
    SELECT lim.type, lim.lane,
           lim.tokens - (SELECT count(*) FROM upd WHERE upd.type = lim.type
                           AND upd.id NOT IN (SELECT id FROM expired)),
           lim.at
    FROM lim WHERE lim.tokens IS NOT NULL AND lim.lane IS NOT NULL
    ON CONFLICT (type, lane) DO UPDATE SET
        tokens = excluded.tokens, refilled_at = excluded.refilled_at
), spent_keys AS (
    -- and each key's tokens in the lane, for a per-key rate; its row says when its bucket is
    -- full again
    INSERT INTO {limit_keys} AS k (type, lane, key, tokens, refilled_at, full_at)
    SELECT s.type, s.lane, s.key, s.left_over, s.at,
           s.at + s.key_rate_period * ((s.key_rate_burst - s.left_over) / s.key_rate_count)
    FROM (SELECT lim.type, lim.lane, u.key, lim.at, lim.key_rate_count, lim.key_rate_period,
                 lim.key_rate_burst,
                 coalesce((lim.key_tokens ->> u.key)::float8, lim.key_rate_burst) - count(*)
                     AS left_over
          FROM upd JOIN lim ON lim.type = upd.type AND lim.key_rate_count IS NOT NULL
          CROSS JOIN LATERAL (SELECT coalesce(upd.concurrency_key,
                                              upd.payload ->> lim.key_field, '') AS key) AS u
          WHERE upd.id NOT IN (SELECT id FROM expired)
          GROUP BY 1, 2, 3, 4, 5, 6, 7, lim.key_tokens) AS s
    ON CONFLICT (type, lane, key) DO UPDATE SET
        tokens = excluded.tokens, refilled_at = excluded.refilled_at, full_at = excluded.full_at
)
SELECT id, type, payload, priority, run_at, attempts, request_id, idempotency_key,
       lease_token, lease_until, claimed_by, created_at, traceparent, tracestate
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
--
-- Types with limits ({limits}) are left to typed claims, which keep them, as if paused: a claim
-- of any type cannot take their locks in type order before it knows its types.
WITH paused AS (
    SELECT type FROM {pauses} WHERE until IS NULL OR until > now()
    UNION ALL
    SELECT type FROM {limits}
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
        claimed_at = now(),
        -- no lane: untyped claims take no limited type's ready jobs (one taken back keeps
        -- its lane)
        limit_lane = CASE WHEN state = 'claimed' THEN limit_lane END
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
       lease_token, lease_until, claimed_by, created_at, traceparent, tracestate
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


-- snooze --
-- A handler hands its job back until %(delay)s from now (ctx.snooze), fenced: pending again at
-- no attempt cost, its slot free at once, and its `snoozed` event says for how long.
WITH upd AS (
    UPDATE {jobs} SET
        state = 'pending',
        attempts = greatest(attempts - 1, 0),
        run_at = now() + %(delay)s::interval,
        lease_token = NULL,
        lease_until = NULL
    WHERE id = %(id)s AND state = 'claimed' AND lease_token = %(token)s::uuid
    RETURNING id, type, request_id, attempts, claimed_by, run_at
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker, reason)
    SELECT id, type, 'snoozed', request_id, attempts, claimed_by,
           'until ' || run_at::text || coalesce(': ' || %(reason)s, '')
    FROM upd
)
SELECT id, run_at FROM upd


-- claim_by_id --
-- Claim one given job, if it is due or its lease expired (inline runs), and if a pending
-- job's limits let it start as claim_typed judges them (a job taken back keeps its slot).
WITH target AS (
    SELECT type FROM {jobs} WHERE id = %(id)s
), lim AS MATERIALIZED (
    SELECT * FROM {limits_fn}(ARRAY(SELECT type FROM target))
), cur AS (
    SELECT id, state FROM {jobs} AS j
    WHERE id = %(id)s
      AND ((state = 'pending' AND run_at <= now()
            AND NOT EXISTS (SELECT FROM lim WHERE lim.cap = 0
                OR coalesce(j.concurrency_key, j.payload ->> lim.key_field, '')
                   = ANY(lim.full_keys)))
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
        claimed_at = now(),
        limit_lane = CASE WHEN cur.state = 'claimed' THEN j.limit_lane
                          ELSE (SELECT lim.lane FROM lim) END
    FROM cur WHERE j.id = cur.id
    RETURNING j.*, cur.state = 'claimed' AS recovered
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker)
    SELECT id, type, CASE WHEN recovered THEN 'recovered' ELSE 'claimed' END,
           request_id, attempts, claimed_by
    FROM upd
), spent AS (
    -- an upsert, as claim_typed's
    INSERT INTO {limit_lanes} AS n (type, lane, tokens, refilled_at)
    SELECT lim.type, lim.lane, lim.tokens - 1, lim.at
    FROM lim, upd
    WHERE lim.tokens IS NOT NULL AND lim.lane IS NOT NULL AND NOT upd.recovered
    ON CONFLICT (type, lane) DO UPDATE SET
        tokens = excluded.tokens, refilled_at = excluded.refilled_at
), spent_keys AS (
    INSERT INTO {limit_keys} AS k (type, lane, key, tokens, refilled_at, full_at)
    SELECT lim.type, lim.lane, u.key, u.left_over, lim.at,
           lim.at + lim.key_rate_period * ((lim.key_rate_burst - u.left_over)
                                           / lim.key_rate_count)
    FROM upd JOIN lim ON lim.type = upd.type AND lim.key_rate_count IS NOT NULL
    CROSS JOIN LATERAL (
        SELECT coalesce(upd.concurrency_key, upd.payload ->> lim.key_field, '') AS key) AS k0
    CROSS JOIN LATERAL (
        SELECT k0.key, coalesce((lim.key_tokens ->> k0.key)::float8, lim.key_rate_burst) - 1
                   AS left_over) AS u
    WHERE NOT upd.recovered
    ON CONFLICT (type, lane, key) DO UPDATE SET
        tokens = excluded.tokens, refilled_at = excluded.refilled_at, full_at = excluded.full_at
)
SELECT id, type, payload, priority, run_at, attempts, request_id, idempotency_key,
       lease_token, lease_until, claimed_by, created_at, traceparent, tracestate
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


-- ---- Operators: the statements of jobq_core.admin, and the runner's registry ----------


-- cutoff --
-- A clear's cutoff: its age ago, but never later than the end of the last foldable minute
-- (date_trunc('minute', now() - interval '10 seconds'): never the minute of the last 10
-- seconds, whose events may not all be committed yet), so that every history row it deletes
-- lies in a minute that the fold before its deletes counts (a `clear --older-than 30s` keeps
-- the current minute's completions for the rates).
SELECT least(now() - %(older_than)s::interval,
             date_trunc('minute', now() - interval '10 seconds'))


-- clear_preview --
-- What clear would remove: old failed jobs, and old history except that of jobs that stay in
-- the queue. Counting it costs what deleting it would (a BRIN range scan), never more.
WITH c AS (
    -- the cutoff, as `cutoff` computes it
    SELECT least(now() - %(older_than)s::interval,
                 date_trunc('minute', now() - interval '10 seconds')) AS cutoff
)
SELECT c.cutoff,
  (SELECT count(*) FROM {jobs} WHERE state IN ('failed', 'cancelled') AND failed_at < c.cutoff),
  (SELECT array_agg(id) FROM (SELECT id FROM {jobs} WHERE state IN ('failed', 'cancelled')
      AND failed_at < c.cutoff ORDER BY failed_at LIMIT 10) s),
  (SELECT count(*) FROM {events} AS e WHERE occurred_at < c.cutoff
      AND NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.id = e.job_id
                      AND NOT (j.state IN ('failed', 'cancelled') AND j.failed_at < c.cutoff)))
FROM c


-- clear_failed_batch --
-- Dead jobs are removed in batches; each removal is itself recorded as history. Each ended
-- state is read from its own partial index (one IN list would scan the whole hot table for
-- every batch), up to a batch of each: a statement that removes fewer than a batch found
-- both exhausted.
WITH del AS (
    DELETE FROM {jobs} WHERE id = ANY(
        ARRAY(SELECT id FROM {jobs} WHERE state = 'failed' AND failed_at < %(cutoff)s
              ORDER BY failed_at, id LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
        || ARRAY(SELECT id FROM {jobs} WHERE state = 'cancelled' AND failed_at < %(cutoff)s
                 ORDER BY failed_at, id LIMIT %(batch)s FOR UPDATE SKIP LOCKED))
      AND state IN ('failed', 'cancelled')
    RETURNING id, type, request_id, attempts, state
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, reason)
    SELECT id, type, 'deleted', request_id, attempts, 'cleared (was ' || state || ')' FROM del
)
SELECT count(*) FROM del


-- history_partitions --
-- The history's partitions, oldest first, each with its bounds, its size in blocks, and
-- whether this role may retire it (only the owner of both it and the history may).
SELECT p.part::regclass::text, p.nsp, p.name, p.is_default, p.lo, p.hi,
       pg_relation_size(p.part) / current_setting('block_size')::bigint,
       pg_has_role(p.owner, 'USAGE')
       AND pg_has_role((SELECT relowner FROM pg_class WHERE oid = %(events)s::regclass), 'USAGE')
FROM (SELECT c.oid AS part, n.nspname AS nsp, c.relname AS name, c.relowner AS owner,
       b.bound = 'DEFAULT' AS is_default,
       CASE WHEN m[1] <> 'MINVALUE' THEN btrim(m[1], '''')::timestamptz END AS lo,
       CASE WHEN m[2] <> 'MAXVALUE' THEN btrim(m[2], '''')::timestamptz END AS hi
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) AS b
    LEFT JOIN LATERAL pg_catalog.regexp_match(b.bound, 'FROM \((.*)\) TO \((.*)\)') AS m
        ON true
    WHERE i.inhparent = %(events)s::regclass) AS p
ORDER BY p.hi NULLS LAST, p.lo


-- free_day_keys --
-- Free the idempotency keys held by one day's history partition before it is dropped.
SELECT * FROM {free_keys_fn}(%(part)s)


-- retire --
-- Drop one day's history partition, moving the rows of jobs still held (%(held)s) to the
-- DEFAULT partition first.
SELECT {retire_fn}(%(part)s, %(held)s::bigint[])


-- clear_events_batch --
-- What no partition could be retired for (the one the cutoff falls in, the DEFAULT partition,
-- those of a clear by another role) is walked once in physical order, through the history,
-- one range of blocks per statement, the same in each partition walked (the ranges add up to
-- 1 MB): a TID Range Scan of just those blocks in each partition that holds rows older than
-- the cutoff, with no sort and no index, so that the walk reads each page once and its cost
-- grows with the size of what is walked, not with its square. (A partition is mostly in time
-- order but freed space is reused, so no range can be skipped by age.) Live jobs keep their
-- history: their ids are looked up in the jobs' primary key, once per job of the range.
-- Written so because the generic plan (jobq's connections force it) cannot size a TID range:
-- a NOT EXISTS was planned as a hash of all 1M jobs for each range (0.8 s against 10 ms), or
-- with JIT compiling for 25 ms (benchmarks/README.md). The keys of the `enqueued` events
-- deleted are freed with them.
WITH old AS MATERIALIZED (
    SELECT DISTINCT job_id FROM {events}
    WHERE ctid >= %(lo)s::tid AND ctid < %(hi)s::tid AND occurred_at < %(cutoff)s
), live AS MATERIALIZED (
    SELECT id FROM {jobs} WHERE id = ANY(ARRAY(SELECT job_id FROM old))
), del AS (
    DELETE FROM {events}
    WHERE ctid >= %(lo)s::tid AND ctid < %(hi)s::tid AND occurred_at < %(cutoff)s
      AND job_id NOT IN (SELECT id FROM live)
    RETURNING job_id, event, idempotency_key
), freed AS (
    DELETE FROM {keys} AS k USING del
    WHERE del.event = 'enqueued' AND k.key = del.idempotency_key AND k.job_id = del.job_id
)
SELECT count(*) FROM del


-- show_job --
-- One job as `jobq show` and the console's detail show it (admin.JobRow's columns).
SELECT id, type, state, payload, priority, run_at, attempts, request_id, idempotency_key,
       lease_until, claimed_by, claimed_at, last_error, failed_at, created_at, lease_ms,
       NULL, concurrency_key, traceparent, tracestate
FROM {jobs} WHERE id = %(id)s


-- job_events --
-- Its history, oldest first (admin.Event's columns).
SELECT id, occurred_at, job_id, type, event, request_id, attempt, worker, reason, result
FROM {events} WHERE job_id = %(id)s ORDER BY id


-- trace --
-- A page of the events under one request id, after event id %(after)s.
SELECT id, occurred_at, job_id, type, event, request_id, attempt, worker, reason, result
FROM {events}
WHERE request_id = %(request_id)s AND id > %(after)s ORDER BY id LIMIT %(limit)s


-- trace_follow --
-- One poll of the trace follower (admin.TraceTail): the request's events above `low` it has
-- not delivered, with this statement's snapshot xmin and a bound above every transaction id
-- assigned before the snapshot. age() counts from the next xid to be assigned, read when it
-- is first called in a transaction that has no xid of its own, i.e. after the snapshot was
-- taken; a transaction with an xid (or a stale reading, below xmax) gives no bound.
-- xid8 -> 32-bit xid through text; 0-2 are not normal xids, so step below them.
WITH snap AS (
    SELECT pg_snapshot_xmin(s)::text::bigint AS xmin, pg_snapshot_xmax(s)::text::bigint AS xmax
    FROM pg_current_snapshot() AS s
), base AS (
    SELECT xmin, xmax,
           CASE WHEN xmax %% 4294967296 < 3 THEN xmax - 3 ELSE xmax END AS b
    FROM snap
), bound AS (
    SELECT xmin, xmax, b + age((b %% 4294967296)::text::xid) AS next_xid FROM base
)
SELECT bound.xmin,
       CASE WHEN pg_current_xact_id_if_assigned() IS NULL AND bound.next_xid >= bound.xmax
            THEN bound.next_xid END,
       e.*
FROM bound LEFT JOIN LATERAL (
    SELECT id, occurred_at, job_id, type, event, request_id, attempt, worker, reason, result
FROM {events}
    WHERE request_id = %(request_id)s AND id > %(low)s::bigint AND id <> ALL(%(seen)s::bigint[])
    ORDER BY id LIMIT %(limit)s
) AS e ON true
ORDER BY e.id


-- retry --
-- Repairs by id, each in one statement with its history row. A preview runs the same
-- eligibility test without changing anything.
-- An operator's retry gives the job a fresh attempt budget (attempts back to 0, as Sidekiq
-- resets its retry count): it runs its handler again however many attempts it spent, and a
-- crash loop after it is still caught by counting from there. Its history keeps the spent
-- attempts, on the `retried` event.
WITH locked AS (
    SELECT id, attempts, state FROM {jobs}
    WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('failed', 'cancelled')
    ORDER BY id FOR UPDATE
), upd AS (
    UPDATE {jobs} AS j SET state = 'pending', run_at = coalesce(%(run_at)s::timestamptz, now()),
        failed_at = NULL, lease_token = NULL, lease_until = NULL, lease_ms = NULL, attempts = 0
    FROM locked WHERE j.id = locked.id AND j.state IN ('failed', 'cancelled')
    RETURNING j.id, j.type, j.request_id, locked.attempts AS spent, locked.state AS was,
              j.run_at
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, reason)
    SELECT id, type, 'retried', request_id, spent,
           %(reason)s || ' after ' || spent || ' attempts (was ' || was
           || '); a fresh attempt budget' FROM upd
)
SELECT id, CASE WHEN run_at <= now() THEN pg_notify({channel}, '')::text END FROM upd


-- extend_by --
-- An operator's extend of claimed jobs by %(by)s from their lease's end (or now, if it
-- passed), rows locked in id order; each writes its `extended` event.
WITH upd AS (
    UPDATE {jobs}
    SET lease_until = greatest(lease_until, now()) + %(by)s::interval
    WHERE id IN (SELECT id FROM {jobs} WHERE id = ANY(%(ids)s::bigint[]) AND state = 'claimed'
                 ORDER BY id FOR UPDATE)
      AND state = 'claimed'
    RETURNING id, type, request_id, attempts, claimed_by, lease_until
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker, reason)
    SELECT id, type, 'extended', request_id, attempts, claimed_by,
           %(reason)s || ': lease until ' || lease_until::text
    FROM upd
)
SELECT id FROM upd


-- delete --
-- A deleted job gives its idempotency key back.
WITH del AS (
    DELETE FROM {jobs}
    WHERE id IN (SELECT id FROM {jobs} WHERE id = ANY(%(ids)s::bigint[])
                 AND (state <> 'claimed' OR %(force)s) ORDER BY id FOR UPDATE)
      AND (state <> 'claimed' OR %(force)s)
    RETURNING id, type, request_id, attempts, state, idempotency_key
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, reason)
    SELECT id, type, 'deleted', request_id, attempts, %(reason)s || ' (was ' || state || ')'
    FROM del
), free_keys AS (
    DELETE FROM {keys} AS k USING del WHERE k.key = del.idempotency_key AND k.job_id = del.id
)
SELECT id FROM del


-- states_of --
-- The states of these jobs: which an action may act on, and why not the rest.
SELECT id, state FROM {jobs} WHERE id = ANY(%(ids)s::bigint[])


-- cancel --
-- An operator's cancel: a pending job ends at once; a running one loses its lease token, so
-- its holder can neither complete nor fail it any more (a late result cannot overwrite the
-- cancel). The NOTIFY 'cancel' makes runners beat now, and a beat tells a runner which of its
-- jobs were cancelled (worker_beat), which stops their handlers.
WITH locked AS (
    SELECT id, state FROM {jobs}
    WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('pending', 'claimed')
    ORDER BY id FOR UPDATE
), upd AS (
    UPDATE {jobs} AS j SET state = 'cancelled', failed_at = now(), last_error = %(reason)s,
        lease_token = NULL, lease_until = NULL
    FROM locked WHERE j.id = locked.id AND j.state IN ('pending', 'claimed')
    RETURNING j.id, j.type, j.request_id, j.attempts, j.claimed_by, locked.state AS was,
              j.has_waiters
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker, reason)
    SELECT id, type, 'cancelled', request_id, attempts,
           CASE WHEN was = 'claimed' THEN claimed_by END, %(reason)s || ' (was ' || was || ')'
    FROM upd
)
SELECT id, was,
       CASE WHEN was = 'claimed' THEN pg_notify({channel}, 'cancel')::text END,
       CASE WHEN has_waiters THEN pg_notify({done_channel}, id::text)::text END
FROM upd


-- cancelled_of --
-- Which of these jobs an operator cancelled, and why: a runner whose lease or ack was refused
-- tells a cancel from a lost lease by it.
SELECT id, coalesce(last_error, 'cancelled') FROM {jobs}
WHERE id = ANY(%(ids)s::bigint[]) AND state = 'cancelled'


-- pause --
-- Paused types: claims skip them (claim_typed, claim_any). A pause for a while ends by itself; pausing a
-- paused type again replaces its duration and reason.
INSERT INTO {pauses} AS p (type, until, paused_by, reason)
SELECT t, now() + %(for)s::interval, %(by)s, %(reason)s FROM unnest(%(types)s::text[]) AS t
ON CONFLICT (type) DO UPDATE SET paused_at = now(), until = excluded.until,
    paused_by = excluded.paused_by, reason = excluded.reason
RETURNING type, paused_at, until, paused_by, reason


-- resume --
-- A resume also tidies away pauses that ran out; it wakes runners for the types' backlog.
WITH gone AS (
    DELETE FROM {pauses}
    WHERE type = ANY(%(types)s::text[]) OR (until IS NOT NULL AND until <= now())
    RETURNING type, until IS NULL OR until > now() AS active
)
SELECT type, pg_notify({channel}, '')::text FROM gone WHERE active


-- pauses --
-- The pauses in force.
SELECT type, paused_at, until, paused_by, reason FROM {pauses}
WHERE until IS NULL OR until > now() ORDER BY type


-- worker_beat --
-- A runner's beat in the registry: it registers on the first, and learns which of the jobs it
-- holds an operator cancelled, whether it is asked to drain, and which of its types are
-- paused. Workers not seen for a day are forgotten (lost ones stay listed until then).
WITH me AS (
    INSERT INTO {workers} AS w (id, name, host, pid, types, concurrency, in_flight,
                                beat_seconds, version)
    VALUES (%(id)s, %(name)s, %(host)s, %(pid)s, %(types)s::text[], %(concurrency)s,
            %(in_flight)s, %(beat_seconds)s, %(version)s)
    ON CONFLICT (id) DO UPDATE SET last_seen = now(), in_flight = excluded.in_flight,
        types = excluded.types, concurrency = excluded.concurrency,
        beat_seconds = excluded.beat_seconds
    RETURNING drain_requested_at, drain_requested_by
), forgotten AS (
    DELETE FROM {workers} WHERE last_seen < now() - interval '1 day' AND id <> %(id)s
)
SELECT (SELECT drain_requested_by FROM me WHERE drain_requested_at IS NOT NULL),
       ARRAY(SELECT ARRAY[id::text, coalesce(last_error, 'cancelled')] FROM {jobs}
             WHERE id = ANY(%(held)s::bigint[]) AND state = 'cancelled'),
       ARRAY(SELECT type FROM {pauses}
             WHERE type = ANY(%(types)s::text[]) AND (until IS NULL OR until > now()))


-- worker_gone --
-- A runner that stops cleanly leaves the registry at once.
DELETE FROM {workers} WHERE id = %(id)s


-- workers --
-- Each worker with its health: alive while it beats, lost after three missed beats.
SELECT id, name, host, pid, types, concurrency, in_flight, started_at, last_seen,
       beat_seconds, drain_requested_at, drain_requested_by, version,
       last_seen > now() - make_interval(secs => 3 * beat_seconds + 5) AS alive,
       extract(epoch FROM now() - last_seen)::float8 AS silent_for
FROM {workers} ORDER BY alive DESC, host, pid, id


-- drain --
-- Ask one worker to drain: stop claiming, finish what it runs, and exit. Beats notice it.
UPDATE {workers} SET drain_requested_at = coalesce(drain_requested_at, now()),
    drain_requested_by = coalesce(drain_requested_by, %(by)s)
WHERE id = %(id)s
RETURNING id, pg_notify({channel}, 'drain')::text


-- limit_lock --
-- Registrations and removals of a type's limits take turns, in type order: each waits here,
-- in its transaction, for the one before to commit, so that its next statement
-- (limit_register, limit_lanes_lock) starts with a snapshot that sees every lane the other
-- made or dropped.
SELECT pg_advisory_xact_lock(hashtextextended(%(scope)s || t.type, 0))
FROM (SELECT type FROM unnest(%(types)s::text[]) AS u(type) ORDER BY type) AS t


-- limit_lanes_lock --
-- A removal locks the type's lanes in order, as claims and registrations take them, before it
-- deletes anything (limit_remove): a claim holds a lane while it writes that lane's key
-- buckets, so a removal that deleted buckets first could wait for a lane that waits for it.
SELECT n.lane FROM {limit_lanes} AS n WHERE n.type = %(type)s ORDER BY n.lane FOR UPDATE


-- limit_register --
-- A runner records the limits of the tasks it serves as it starts (jobq_core/limits.py): the
-- claims read them from here, whichever runner claims. Returns the definition each replaced,
-- if it differed (runners of two versions of a task disagree; the newest to start wins).
--
-- A type's lanes (limits_function) are remade only when their number or the rate changed, under
-- the locks of all of them, taken in lane order as claims take them. A new type's buckets
-- start empty: a claim whose snapshot predates the rows could not spend from them. A changed
-- rate starts full. An unchanged rate over a new number of lanes shares out the tokens its
-- lanes held. A per-key rate's buckets start full again when its lanes or the rate changed.
WITH given AS (
    SELECT * FROM unnest(%(types)s::text[], %(global)s::int[], %(key_limit)s::int[],
                         %(key_field)s::text[], %(rate_count)s::int[],
                         %(rate_period)s::interval[], %(rate_burst)s::int[],
                         %(key_rate_count)s::int[], %(key_rate_period)s::interval[],
                         %(key_rate_burst)s::int[])
        AS g(type, global_concurrency, key_concurrency, key_field, rate_count, rate_period,
             rate_burst, key_rate_count, key_rate_period, key_rate_burst)
), before AS (
    SELECT l.* FROM {limits} AS l JOIN given USING (type) ORDER BY l.type FOR UPDATE OF l
), lanes_before AS (
    SELECT n.*, clock_timestamp() AS clock FROM {limit_lanes} AS n
    WHERE n.type IN (SELECT type FROM given)
    ORDER BY n.type, n.lane FOR UPDATE
), saved AS (
    INSERT INTO {limits} AS l (type, global_concurrency, key_concurrency, key_field,
                               rate_count, rate_period, rate_burst, key_rate_count,
                               key_rate_period, key_rate_burst, registered_by)
    SELECT type, global_concurrency, key_concurrency, key_field, rate_count, rate_period,
           rate_burst, key_rate_count, key_rate_period, key_rate_burst, %(by)s
    FROM given ORDER BY type
    ON CONFLICT (type) DO UPDATE SET
        global_concurrency = excluded.global_concurrency,
        key_concurrency = excluded.key_concurrency,
        key_field = excluded.key_field,
        rate_count = excluded.rate_count,
        rate_period = excluded.rate_period,
        rate_burst = excluded.rate_burst,
        key_rate_count = excluded.key_rate_count,
        key_rate_period = excluded.key_rate_period,
        key_rate_burst = excluded.key_rate_burst,
        registered_at = now(),
        registered_by = excluded.registered_by
    RETURNING l.*
), remade AS (
    -- the types whose lanes are remade, with the tokens their old lanes hold now
    SELECT s.type, s.lanes, s.rate_burst, b.type IS NULL AS new,
           (b.rate_count, b.rate_period, b.rate_burst)
               IS DISTINCT FROM (s.rate_count, s.rate_period, s.rate_burst) AS new_rate,
           (b.key_rate_count, b.key_rate_period, b.key_rate_burst, b.lanes)
               IS DISTINCT FROM (s.key_rate_count, s.key_rate_period, s.key_rate_burst,
                                 s.lanes) AS new_key_rate,
           (SELECT sum(least(b.rate_burst / b.lanes + (o.lane < mod(b.rate_burst, b.lanes))::int,
                             o.tokens + b.rate_count::float8 / b.lanes
                               * greatest(0, extract(epoch FROM o.clock - o.refilled_at))
                               / extract(epoch FROM b.rate_period)))
            FROM lanes_before AS o WHERE o.type = s.type AND o.lane < b.lanes) AS held
    FROM saved AS s LEFT JOIN before AS b USING (type)
    WHERE b.type IS NULL OR b.lanes <> s.lanes
       OR (b.rate_count, b.rate_period, b.rate_burst)
          IS DISTINCT FROM (s.rate_count, s.rate_period, s.rate_burst)
       OR (b.key_rate_count, b.key_rate_period, b.key_rate_burst)
          IS DISTINCT FROM (s.key_rate_count, s.key_rate_period, s.key_rate_burst)
), lanes AS (
    INSERT INTO {limit_lanes} AS n (type, lane, tokens, refilled_at)
    SELECT r.type, g.lane,
           CASE WHEN r.new OR r.rate_burst IS NULL THEN 0
                WHEN r.new_rate
                THEN r.rate_burst / r.lanes + (g.lane < mod(r.rate_burst, r.lanes))::int
                ELSE least(r.rate_burst / r.lanes + (g.lane < mod(r.rate_burst, r.lanes))::int,
                           coalesce(r.held, 0) / r.lanes) END,
           clock_timestamp()
    FROM remade AS r CROSS JOIN LATERAL generate_series(0, r.lanes - 1) AS g(lane)
    ORDER BY r.type, g.lane
    ON CONFLICT (type, lane) DO UPDATE SET
        tokens = excluded.tokens, refilled_at = excluded.refilled_at
), lanes_gone AS (
    DELETE FROM {limit_lanes} AS n USING remade AS r
    WHERE n.type = r.type AND n.lane >= r.lanes
), keys_gone AS (
    DELETE FROM {limit_keys} AS k USING remade AS r WHERE k.type = r.type AND r.new_key_rate
)
SELECT b.type, b.global_concurrency, b.key_concurrency, b.key_field, b.rate_count,
       b.rate_period, b.rate_burst, b.key_rate_count, b.key_rate_period, b.key_rate_burst,
       b.registered_by
FROM before AS b JOIN given AS g USING (type)
WHERE (b.global_concurrency, b.key_concurrency, b.key_field, b.rate_count, b.rate_period,
       b.rate_burst, b.key_rate_count, b.key_rate_period, b.key_rate_burst)
      IS DISTINCT FROM
      (g.global_concurrency, g.key_concurrency, g.key_field, g.rate_count, g.rate_period,
       g.rate_burst, g.key_rate_count, g.key_rate_period, g.key_rate_burst)


-- limit_remove --
-- An operator removes a type's limits (a runner serving the type with limits records them
-- again when it starts), their lanes and its keys' buckets.
WITH lanes AS (
    DELETE FROM {limit_lanes} WHERE type = %(type)s
), keys AS (
    DELETE FROM {limit_keys} WHERE type = %(type)s
)
DELETE FROM {limits} WHERE type = %(type)s RETURNING type


-- limits --
-- Every type's limits, its slots in use (claimed jobs, expired leases included: their slots
-- pass to whoever takes them back), its busiest key's, its rate's tokens now (all its lanes'),
-- and its number of lanes. A read: it locks nothing, so it may lag a claim in flight.
SELECT l.type, l.global_concurrency, l.key_concurrency, l.key_field, l.rate_count,
       l.rate_period, l.rate_burst, l.key_rate_count, l.key_rate_period, l.key_rate_burst,
       u.in_use, u.keys_in_use, u.busiest, t.tokens, l.registered_at, l.registered_by,
       l.lanes
FROM {limits} AS l
CROSS JOIN LATERAL (
    -- the tokens of the rate's lanes now
    SELECT sum(least(l.rate_burst / l.lanes + (n.lane < mod(l.rate_burst, l.lanes))::int,
                     n.tokens + l.rate_count::float8 / l.lanes
                       * greatest(0, extract(epoch FROM clock_timestamp() - n.refilled_at))
                       / extract(epoch FROM l.rate_period))) AS tokens
    FROM {limit_lanes} AS n
    WHERE l.rate_count IS NOT NULL AND n.type = l.type AND n.lane < l.lanes
) AS t
CROSS JOIN LATERAL (
    SELECT coalesce(sum(n), 0)::int AS in_use, count(*)::int AS keys_in_use,
           coalesce(max(n), 0)::int AS busiest
    FROM (SELECT count(*) AS n FROM {jobs} AS j
          WHERE j.state = 'claimed' AND j.type = l.type
          GROUP BY coalesce(j.concurrency_key, j.payload ->> l.key_field, '')) AS k
) AS u
ORDER BY l.type


-- schedule_register --
-- A runner that serves periodic jobs records each of its schedules as it starts, for `jobq
-- schedules` and the console. A schedule seen for the first time starts from now: slots
-- before it are not missed ones. One registered again keeps the newest slot it handled, so
-- a changed expression takes effect from there.
INSERT INTO {schedules} AS s (name, cron, tz, every, missed, last_slot, registered_by)
SELECT * FROM unnest(%(names)s::text[], %(crons)s::text[], %(tzs)s::text[],
                     %(everys)s::interval[], %(missed)s::text[]),
     LATERAL (SELECT coalesce(%(now)s::timestamptz, statement_timestamp()),
                     %(by)s::text) AS registered
ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, tz = excluded.tz,
    every = excluded.every, missed = excluded.missed, registered_at = now(),
    registered_by = excluded.registered_by


-- schedule_patience --
-- A tick waits this long at most for its schedule's row (another runner's tick holds it for
-- milliseconds; a session that died holding it may keep it until the server notices), so
-- that one stuck row never holds up the other schedules' ticks.
SELECT set_config('lock_timeout', '5s', true)


-- schedule_lock --
-- A tick takes its schedule's row for the rest of its transaction: ticks of the same
-- schedule, on any number of runners, follow each other, and each sees the slot the one
-- before it handled. The clock is the database's, the same for every runner.
SELECT last_slot, statement_timestamp(), cron, tz, every FROM {schedules}
WHERE name = %(name)s FOR UPDATE


-- schedule_advance --
-- After the tick's jobs are enqueued, in the same transaction: the newest slot handled
-- (fired, or passed over as missed), and the job of the newest slot fired.
UPDATE {schedules} SET last_slot = %(last_slot)s,
    last_job_id = coalesce(%(job_id)s, last_job_id),
    fired_at = CASE WHEN %(job_id)s::bigint IS NULL THEN fired_at ELSE statement_timestamp() END
WHERE name = %(name)s


-- schedule_remove --
-- An operator removes a schedule that no runner serves any more.
DELETE FROM {schedules} WHERE name = %(name)s RETURNING name


-- schedules --
-- Every schedule with its last job's state: live, or its last event once it finished.
SELECT s.name, s.cron, s.tz, s.every, s.missed, s.last_slot, s.last_job_id, s.fired_at,
       s.registered_at, s.registered_by,
       coalesce((SELECT j.state FROM {jobs} j WHERE j.id = s.last_job_id),
                (SELECT e.event FROM {events} e WHERE e.job_id = s.last_job_id
                 ORDER BY e.id DESC LIMIT 1)) AS last_state,
       statement_timestamp()
FROM {schedules} s ORDER BY s.name


-- stats_types --
-- Every type with live jobs, a pause, or ends in the last hour, by loose index scans: the cost
-- grows with the number of types, not of jobs. Claimed jobs are few (bounded by the workers'
-- slots), so they are read as is.
WITH RECURSIVE pending_types AS (
    (SELECT type FROM {jobs} WHERE state = 'pending' ORDER BY type LIMIT 1)
    UNION ALL
    SELECT (SELECT type FROM {jobs} WHERE state = 'pending' AND type > p.type
            ORDER BY type LIMIT 1)
    FROM pending_types p WHERE p.type IS NOT NULL
), failed_types AS (
    (SELECT type FROM {jobs} WHERE state = 'failed' ORDER BY type LIMIT 1)
    UNION ALL
    SELECT (SELECT type FROM {jobs} WHERE state = 'failed' AND type > f.type
            ORDER BY type LIMIT 1)
    FROM failed_types f WHERE f.type IS NOT NULL
), cancelled_types AS (
    (SELECT type FROM {jobs} WHERE state = 'cancelled' ORDER BY type LIMIT 1)
    UNION ALL
    SELECT (SELECT type FROM {jobs} WHERE state = 'cancelled' AND type > c.type
            ORDER BY type LIMIT 1)
    FROM cancelled_types c WHERE c.type IS NOT NULL
)
SELECT type FROM pending_types WHERE type IS NOT NULL
UNION SELECT type FROM failed_types WHERE type IS NOT NULL
UNION SELECT type FROM cancelled_types WHERE type IS NOT NULL
UNION SELECT DISTINCT type FROM {jobs} WHERE state = 'claimed'
UNION SELECT type FROM {pauses} WHERE until IS NULL OR until > now()
UNION SELECT DISTINCT type FROM {rates}
      WHERE type <> '' AND minute >= date_trunc('minute', now()) - interval '1 hour'
-- ends the fold has not reached yet (it leaves the last minute or two): without them a type
-- whose jobs all finished moments ago would drop out until its minute is folded, and return
UNION SELECT DISTINCT type FROM {events}
      WHERE occurred_at >= date_trunc('minute', now() - interval '70 seconds')
        AND event IN ('completed', 'failed')
ORDER BY 1


-- stats_type --
-- One type's figures. Counts stop at %(cap)s (due and scheduled ones at %(pending_cap)s) so
-- that a huge backlog costs no more than a small one; beyond it the caller shows an estimate,
-- marked as such. Due and scheduled jobs are counted per priority (few), where run_at is a
-- range of ready_type_idx: counted across priorities, a type whose jobs are all due read its
-- whole backlog to find no scheduled one.
WITH RECURSIVE prio AS (
    (SELECT priority FROM {jobs} WHERE state = 'pending' AND type = %(type)s
     ORDER BY priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT priority FROM {jobs} WHERE state = 'pending' AND type = %(type)s
            AND priority < prio.priority ORDER BY priority DESC LIMIT 1)
    FROM prio WHERE prio.priority IS NOT NULL
)
SELECT
  (SELECT count(*) FROM (SELECT 1 FROM prio CROSS JOIN LATERAL (
      SELECT 1 FROM {jobs} WHERE state = 'pending' AND type = %(type)s
      AND priority = prio.priority AND run_at <= now() LIMIT %(pending_cap)s) AS j
      LIMIT %(pending_cap)s) s),
  (SELECT count(*) FROM (SELECT 1 FROM prio CROSS JOIN LATERAL (
      SELECT 1 FROM {jobs} WHERE state = 'pending' AND type = %(type)s
      AND priority = prio.priority AND run_at > now() LIMIT %(pending_cap)s) AS j
      LIMIT %(pending_cap)s) s),
  (SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'claimed' AND type = %(type)s
      LIMIT %(cap)s) s),
  -- late: less than half of its own lease left, so at least one heartbeat was missed (a
  -- runner renews every third of a lease)
  (SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'claimed' AND type = %(type)s
      AND lease_until >= now()
      AND lease_until < now() + coalesce(lease_ms, 30000) / 2 * interval '1 millisecond'
      LIMIT %(cap)s) s),
  (SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'claimed' AND type = %(type)s
      AND lease_until < now() LIMIT %(cap)s) s),
  (SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'failed' AND type = %(type)s
      LIMIT %(cap)s) s),
  (SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'cancelled' AND type = %(type)s
      LIMIT %(cap)s) s),
  -- the oldest due job: the first of each priority's run_at order
  (SELECT now() - min((SELECT run_at FROM {jobs} WHERE state = 'pending' AND type = %(type)s
                       AND priority = prio.priority ORDER BY run_at LIMIT 1))
   FROM prio WHERE prio.priority IS NOT NULL)


-- stats_rates --
-- Completions and failures per type and minute over the last hour (minute 0 the oldest of
-- 60), for every type at once: one range of the rollup's primary key.
WITH h AS (SELECT date_trunc('minute', now()) - interval '60 minutes' AS start)
SELECT type, (extract(epoch FROM minute - h.start) / 60)::int, completed, failed
FROM {rates}, h
WHERE minute >= h.start AND minute < h.start + interval '60 minutes' AND type <> ''


-- stats_served --
-- The types some live worker serves: the overview says when none serves a type, rather than
-- "the next claim takes them back".
-- alive as `workers` judges it: three missed beats and a margin
SELECT DISTINCT unnest(types) FROM {workers}
WHERE last_seen > now() - make_interval(secs => 3 * beat_seconds + 5)


-- stats_estimates --
-- Row estimates for counts beyond the cap, for many (type, state) pairs in one statement,
-- worked out from the column statistics as the planner does (columns taken as independent:
-- the share of rows in the state times the type's share), and the share of run_at at or
-- before now, which splits a type's pending jobs into due and scheduled where neither count
-- is exact. An EXPLAIN per count cost more than the counting it replaced (1.5 ms each). No
-- rows when the table was never analyzed, or its statistics cannot be read.
WITH t AS (
    -- rows per page as last analyzed, times the pages there are now, as the planner does
    SELECT c.reltuples / greatest(c.relpages, 1)
           * greatest(pg_relation_size(c.oid) / current_setting('block_size')::int, 1)
           AS reltuples, n.nspname, c.relname
    FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.oid = %(jobs_name)s::regclass AND c.reltuples > 0
), col AS (
    SELECT s.attname, s.null_frac,
           CASE WHEN s.n_distinct < 0 THEN -s.n_distinct * t.reltuples
                ELSE s.n_distinct END AS distinct_values,
           coalesce(s.most_common_vals::text::text[], '{{}}') AS vals,
           coalesce(s.most_common_freqs, '{{}}') AS freqs,
           (SELECT coalesce(sum(f), 0) FROM unnest(s.most_common_freqs) AS f) AS common,
           s.histogram_bounds::text::text[] AS bounds
    FROM pg_stats AS s, t
    WHERE s.schemaname = t.nspname AND s.tablename = t.relname AND NOT s.inherited
      AND s.attname IN ('type', 'state', 'run_at')
), share AS (
    -- a value's share: its own frequency when it is a common value, otherwise an even split
    -- of what the common values leave
    SELECT q.type, q.state,
           coalesce(col.freqs[array_position(col.vals, CASE col.attname WHEN 'type' THEN q.type
                                                                        ELSE q.state END)],
                    greatest(1 - col.null_frac - col.common, 0)
                    / greatest(col.distinct_values - cardinality(col.vals), 1)) AS part
    FROM unnest(%(types)s::text[], %(states)s::text[]) AS q(type, state)
    JOIN col ON col.attname IN ('type', 'state')
), due AS (
    -- the common values at or before now, and of the rest the histogram's share
    SELECT (SELECT coalesce(sum(f), 0) FROM unnest(col.vals, col.freqs) AS m(v, f)
            WHERE v::timestamptz <= now())
           + greatest(1 - col.null_frac - col.common, 0)
             * coalesce((SELECT count(*) FILTER (WHERE b::timestamptz <= now())::float8
                                / nullif(count(*), 0) FROM unnest(col.bounds) AS b),
                        0.5) AS part
    FROM col WHERE col.attname = 'run_at'
)
SELECT s.type, s.state, round(t.reltuples * exp(sum(ln(greatest(s.part, 1e-12)))))::bigint,
       coalesce((SELECT part FROM due), 0.5)
FROM share AS s, t
GROUP BY s.type, s.state, t.reltuples
-- both factors or none: one alone would count every state, or every type
HAVING count(*) = 2


-- fold_rates --
-- Fold finished minutes of history into the rates table, at most one hour back and never
-- the last 10 seconds' minute (its events may not all be committed). Idempotent: a minute is
-- folded once, recorded in the table itself by a row with type '', and two folders at once
-- count the same rows (the second's inserts wait for the first's, then do nothing).
WITH todo AS (
    SELECT m FROM generate_series(date_trunc('minute', now()) - interval '60 minutes',
                                  -- the last minute whose events are all committed
                                  date_trunc('minute', now() - interval '10 seconds')
                                      - interval '1 minute',
                                  interval '1 minute') AS m
    WHERE NOT EXISTS (SELECT 1 FROM {rates} WHERE minute = m AND type = '')
), counted AS (
    SELECT date_trunc('minute', e.occurred_at) AS minute, e.type,
           count(*) FILTER (WHERE e.event = 'completed') AS completed,
           count(*) FILTER (WHERE e.event = 'failed') AS failed
    FROM {events} e
    WHERE e.occurred_at >= (SELECT min(m) FROM todo)
      AND e.occurred_at < (SELECT max(m) FROM todo) + interval '1 minute'
      AND e.event IN ('completed', 'failed')
      AND date_trunc('minute', e.occurred_at) IN (SELECT m FROM todo)
    GROUP BY 1, 2
), ins AS (
    INSERT INTO {rates} (minute, type, completed, failed)
    SELECT minute, type, completed, failed FROM counted
    UNION ALL SELECT m, '', 0, 0 FROM todo
    ON CONFLICT (minute, type) DO NOTHING
    RETURNING 1
), trim AS (
    DELETE FROM {rates} WHERE minute < date_trunc('minute', now()) - interval '2 hours'
)
SELECT count(*) FROM ins


-- may_fold --
-- Whether this call folds: not in a read-only session, not by a role that may not write the
-- rates (a SELECT-only role reads status all the same), and only one folder at a time. A
-- folder that must not skip (`wait`: a clear, about to delete what the fold counts) waits for
-- the one folding now to commit, and then folds what is left. The second column: whether it
-- may also keep the history's partitions ahead (keep_ahead, by ahead_function).
SELECT CASE WHEN current_setting('transaction_read_only') = 'on'
              OR NOT (has_table_privilege(%(rates)s, 'INSERT')
                      AND has_table_privilege(%(rates)s, 'DELETE')) THEN false
            WHEN %(wait)s
                THEN (SELECT true FROM pg_advisory_xact_lock(hashtextextended(%(key)s, 1)))
            ELSE pg_try_advisory_xact_lock(hashtextextended(%(key)s, 1)) END,
       coalesce(has_function_privilege(
           to_regprocedure(%(ahead)s || '(integer, timestamptz)'), 'EXECUTE'), false)


-- keep_ahead --
-- Create the history's daily partitions %(days)s days ahead.
SELECT {ahead_fn}(%(days)s)


-- small_reads --
-- For the rest of a transaction of small reads (status, a fold): no JIT, no parallel workers.
-- Their history reads are bounded by now(), so partitions are pruned when they run, not when
-- they are planned, and the plan is costed as if every day were read: at 10M history rows
-- that bought 2 workers and JIT compiling for reads of a minute's rows (100 ms instead of 1 ms
-- for stats_types, 156 ms instead of 13 ms for fold_rates; benchmarks/README.md).
SELECT set_config('jit', 'off', true), set_config('max_parallel_workers_per_gather', '0', true)


-- doctor_tables --
-- doctor: sizes, bloat and vacuum of the queue's tables, what holds back the xmin horizon,
-- invalid indexes. Read from the catalogs and statistics views only. A partitioned table, and
-- its indexes, count with their partitions.
SELECT c.relname, sum(pg_total_relation_size(t.relid)), sum(pg_relation_size(t.relid)),
       coalesce(sum(s.n_live_tup), 0), coalesce(sum(s.n_dead_tup), 0),
       max(greatest(s.last_autovacuum, s.last_vacuum)),
       max(greatest(s.last_autoanalyze, s.last_analyze))
FROM pg_class c
CROSS JOIN LATERAL (SELECT c.oid AS relid UNION SELECT relid FROM pg_partition_tree(c.oid)) AS t
LEFT JOIN pg_stat_all_tables s ON s.relid = t.relid
WHERE c.oid = ANY(ARRAY[to_regclass(%(jobs)s), to_regclass(%(events)s), to_regclass(%(rates)s),
                        to_regclass(%(keys)s)])
GROUP BY c.relname
ORDER BY c.relname


-- doctor_indexes --
-- The queue's indexes, their size (over partitions too) and whether each is valid (a
-- failed CONCURRENTLY build leaves one that is not).
SELECT i.indexrelid::regclass::text,
       (SELECT sum(pg_relation_size(t.relid)) FROM (SELECT i.indexrelid AS relid
                                                    UNION SELECT relid
                                                    FROM pg_partition_tree(i.indexrelid)) AS t),
       i.indisvalid
FROM pg_index i
WHERE i.indrelid = ANY(ARRAY[to_regclass(%(jobs)s), to_regclass(%(events)s),
                             to_regclass(%(keys)s)])
ORDER BY 1


-- doctor_partitions --
-- The history's partitions: how many, how far ahead they reach, and about how many rows
-- the DEFAULT partition holds (rows no day covered, and the kept history of live jobs).
SELECT count(*) FILTER (WHERE NOT p.is_default), max(p.hi),
       coalesce(max(p.hi) > now() + interval '1 day', false),
       max(pg_stat_get_live_tuples(p.part)) FILTER (WHERE p.is_default)
FROM (SELECT c.oid AS part, n.nspname AS nsp, c.relname AS name, c.relowner AS owner,
       b.bound = 'DEFAULT' AS is_default,
       CASE WHEN m[1] <> 'MINVALUE' THEN btrim(m[1], '''')::timestamptz END AS lo,
       CASE WHEN m[2] <> 'MAXVALUE' THEN btrim(m[2], '''')::timestamptz END AS hi
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) AS b
    LEFT JOIN LATERAL pg_catalog.regexp_match(b.bound, 'FROM \((.*)\) TO \((.*)\)') AS m
        ON true
    WHERE i.inhparent = %(events)s::regclass) AS p


-- doctor_holders --
-- Everything that keeps vacuum from removing this database's dead rows, oldest first:
-- sessions by their snapshot (backend_xmin) or by their transaction id (backend_xid: a writer
-- in an open transaction has no snapshot while idle), prepared transactions, and replication
-- slots (xmin; catalog_xmin holds back the catalogs only). Sessions of other databases do not
-- hold back this one's tables; walsenders (no database) do, through hot_standby_feedback.
SELECT kind, pid, name, app, state, seconds, xid_age, via, query FROM (
    SELECT 'session' AS kind, a.pid, NULL::text AS name, coalesce(a.application_name, '') AS app,
           coalesce(a.state, a.backend_type, 'unknown') AS state,
           extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8 AS seconds,
           greatest(age(a.backend_xmin), age(a.backend_xid)) AS xid_age,
           CASE WHEN a.backend_xid IS NOT NULL THEN 'transaction id' ELSE 'snapshot' END AS via,
           left(a.query, 200) AS query
    FROM pg_stat_activity AS a
    WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
      AND a.pid <> pg_backend_pid() AND a.leader_pid IS NULL
      AND a.backend_type IS DISTINCT FROM 'autovacuum worker'
      AND (a.datname = current_database() OR a.datid IS NULL)
    UNION ALL
    SELECT 'prepared', NULL, gid, '', 'prepared by ' || owner,
           extract(epoch FROM now() - prepared)::float8, age(transaction), 'transaction id', NULL
    FROM pg_prepared_xacts WHERE database = current_database()
    UNION ALL
    SELECT 'slot', active_pid, slot_name, coalesce(plugin, ''),
           CASE WHEN active THEN 'active' ELSE 'inactive' END, NULL, age(xmin), 'xmin', NULL
    FROM pg_replication_slots WHERE xmin IS NOT NULL
    UNION ALL
    SELECT 'catalog slot', active_pid, slot_name, coalesce(plugin, ''),
           CASE WHEN active THEN 'active' ELSE 'inactive' END, NULL, age(catalog_xmin),
           'catalog_xmin', NULL
    FROM pg_replication_slots
    WHERE catalog_xmin IS NOT NULL AND (database IS NULL OR database = current_database())
) AS h
ORDER BY xid_age DESC, seconds DESC NULLS LAST


-- doctor_events_sequence --
-- The trace follower relies on event ids being handed out in order (CACHE 1, the default).
SELECT seqcache FROM pg_sequence
WHERE seqrelid = pg_get_serial_sequence(%(events)s, 'id')::regclass


-- doctor_expired --
-- How many leases have run out (up to 10,000): jobs whose holders died or stalled.
SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'claimed' AND lease_until < now()
                      LIMIT 10000) s


-- server_identity --
-- Reads on a replica (admin.Admin with `reads`). Which server a session is on: a standby still
-- in recovery or not, of which cluster (a primary and all its physical standbys share
-- pg_control_system's identifier) and which database.
SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system()),
       current_database()


-- replication --
-- Where a standby stands: whether a WAL receiver runs (its row shows to every role, its
-- details only to pg_read_all_stats), the WAL it received and replayed, the primary's commit
-- time of the last transaction replayed and its age by this server's clock, and whether it
-- has replayed up to `written`, a primary's WAL position (NULL: nothing to wait for).
SELECT pg_is_in_recovery(), EXISTS (SELECT FROM pg_stat_wal_receiver),
       pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
       greatest(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint,
       pg_last_xact_replay_timestamp(), now() - pg_last_xact_replay_timestamp(),
       %(written)s::pg_lsn IS NULL OR pg_last_wal_replay_lsn() >= %(written)s::pg_lsn


-- wal_position --
-- On the primary, after an action: a WAL position at or past its commit, which a replica has
-- replayed once the action shows there.
SELECT pg_current_wal_insert_lsn()::text


-- ---- Schema: every version's statements, in order (sql.MIGRATION_STEPS names them) -------


-- schema_state --
-- Whether the jobs table and the migrations table exist, and the jobs table's columns (an
-- upstream layout is upgraded in place).
SELECT to_regclass(%(jobs)s) IS NOT NULL,
       to_regclass(%(migrations)s) IS NOT NULL,
       (SELECT array_agg(ARRAY[attname::text, format_type(atttypid, NULL)]) FROM pg_attribute
         WHERE attrelid = to_regclass(%(jobs)s) AND attnum > 0 AND NOT attisdropped)


-- schema_version --
-- The schema version the tables are at.
SELECT coalesce(max(version), 0) FROM {migrations}


-- advisory_lock --
-- The migration lock of one queue, by its resolved name: one migrator at a time.
SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))


-- resolve_schema --
-- The schema an unqualified table resolves to (where it is, else where it would be
-- created) and its NOTIFY channel. NULL when the search_path names no schema that exists.
-- The channel, from the resolved schema and name: at most 48 bytes (a channel stops at 63),
-- readable, and the same however the table was spelled; notify_function computes the same.
SELECT resolved,
       CASE WHEN resolved IS NOT NULL
            THEN 'jobq_' || left(%(table)s::text, 30) || '_'
                 || left(encode(sha256(convert_to(resolved || '.' || %(table)s::text,
                                                  'UTF8')), 'hex'), 12) END
FROM (SELECT coalesce((SELECT n.nspname::text FROM pg_class AS c
                         JOIN pg_namespace AS n ON n.oid = c.relnamespace
                        WHERE c.oid = to_regclass(%(jobs)s)),
                      %(schema)s, current_schema()::text) AS resolved) AS target


-- create_migrations --
-- The applied schema versions.
CREATE TABLE IF NOT EXISTS {migrations} (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)


-- record_migration --
-- A version, applied.
INSERT INTO {migrations} (version, name) VALUES (%(version)s, %(name)s)
ON CONFLICT (version) DO NOTHING


-- create_jobs --
-- Version 1, fresh: the jobs table.
CREATE TABLE {jobs} (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    type text NOT NULL,
    payload jsonb,
    state text NOT NULL DEFAULT 'pending' CONSTRAINT {state_check} CHECK (state IN ({states})),
    priority smallint NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    request_id text,
    idempotency_key text,
    lease_token uuid,
    lease_until timestamptz,
    claimed_by text,
    claimed_at timestamptz,
    last_error text,
    failed_at timestamptz,
    has_waiters boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80)


-- legacy_rename_id --
-- Version 1 over the upstream JavaScript layout (svti_jobs_id, queue, claimed_at,
-- claimed_until, ...), renamed and widened in place, so that no row is copied or lost: the id.
ALTER TABLE {jobs} RENAME COLUMN {legacy_id} TO id


-- legacy_rename_queue --
-- The type, upstream's queue.
ALTER TABLE {jobs} RENAME COLUMN queue TO type


-- legacy_rename_lease --
-- The lease's end, upstream's claimed_until.
ALTER TABLE {jobs} RENAME COLUMN claimed_until TO lease_until


-- legacy_add_columns --
-- The columns upstream lacks.
ALTER TABLE {jobs}
        ADD COLUMN IF NOT EXISTS request_id text,
        ADD COLUMN IF NOT EXISTS created_at timestamptz,
        ADD COLUMN state text NOT NULL DEFAULT 'pending',
        ADD COLUMN priority smallint NOT NULL DEFAULT 0,
        ADD COLUMN run_at timestamptz,
        ADD COLUMN idempotency_key text,
        ADD COLUMN lease_token uuid,
        ADD COLUMN claimed_by text,
        ADD COLUMN last_error text,
        ADD COLUMN failed_at timestamptz,
        ADD COLUMN has_waiters boolean NOT NULL DEFAULT false


-- legacy_fill_columns --
-- Their values for the rows already there: a claimed row keeps
-- its claim, under a fresh token.
UPDATE {jobs} SET
        created_at = coalesce(created_at, now()),
        run_at = coalesce(created_at, now()),
        state = CASE WHEN claimed_at IS NULL THEN 'pending' ELSE 'claimed' END,
        lease_token = CASE WHEN claimed_at IS NULL THEN NULL ELSE gen_random_uuid() END,
        lease_until = CASE WHEN claimed_at IS NULL THEN NULL ELSE coalesce(lease_until, now()) END,
        claimed_by = CASE WHEN claimed_at IS NULL THEN NULL ELSE 'legacy' END


-- legacy_constrain --
-- Then the defaults and the state check of a fresh table.
ALTER TABLE {jobs}
        ALTER COLUMN created_at SET NOT NULL,
        ALTER COLUMN created_at SET DEFAULT now(),
        ALTER COLUMN run_at SET NOT NULL,
        ALTER COLUMN run_at SET DEFAULT now(),
        ADD CONSTRAINT {state_check} CHECK (state IN ({states})),
        SET (fillfactor = 80)


-- legacy_drop_pending_index --
-- Upstream's indexes go.
DROP INDEX IF EXISTS {legacy_pending_idx_q}


-- legacy_drop_visibility_index --
-- (the other one)
DROP INDEX IF EXISTS {legacy_visibility_idx_q}


-- ready_index --
-- Version 1: the claim order, exactly: priority first, then run_at, then id.
CREATE INDEX {ready_idx} ON {jobs} (priority DESC, run_at, id) WHERE state = 'pending'


-- ready_type_index --
-- The same order within a type: each claimed type's seek (claim_typed).
CREATE INDEX {ready_type_idx} ON {jobs} (type, priority DESC, run_at, id) WHERE state = 'pending'


-- lease_index --
-- Claimed jobs by lease end (version 6 replaces it by lease_type_index).
CREATE INDEX {lease_idx} ON {jobs} (lease_until, id) WHERE state = 'claimed'


-- failed_index --
-- Failed jobs by failure time.
CREATE INDEX {failed_idx} ON {jobs} (failed_at, id) WHERE state = 'failed'


-- idempotency_index --
-- A live job's idempotency key is its own.
CREATE UNIQUE INDEX {idempotency_idx} ON {jobs} (idempotency_key) WHERE idempotency_key IS NOT NULL


-- events_table --
-- The history. No primary-key index: history is read by job, by request id or by age,
-- never by its own id alone, and one btree fewer makes every transition cheaper.
CREATE TABLE {events} (
        id bigint GENERATED ALWAYS AS IDENTITY,
        occurred_at timestamptz NOT NULL DEFAULT now(),
        job_id bigint NOT NULL,
        type text NOT NULL,
        event text NOT NULL CONSTRAINT {ev_event_check} CHECK (event IN ({events_list})),
        request_id text,
        attempt integer NOT NULL DEFAULT 0,
        worker text,
        reason text,
        result jsonb,
        idempotency_key text
    )


-- events_job_index --
-- A job's history.
CREATE INDEX {ev_job_idx} ON {events} (job_id, id)


-- events_request_index --
-- A request's history (trace).
CREATE INDEX {ev_request_idx} ON {events} (request_id, id) WHERE request_id IS NOT NULL


-- events_at_index --
-- History is append-only, so a BRIN index serves age-based deletes at almost no write cost.
CREATE INDEX {ev_at_idx} ON {events} USING brin (occurred_at)


-- events_idempotency_index --
-- Completed events by key (version 3 replaces it).
CREATE INDEX {ev_idempotency_idx} ON {events} (idempotency_key, id)
WHERE event = 'completed' AND idempotency_key IS NOT NULL


-- events_completed_index --
-- The completed tab pages through history newest first; one entry per finished job.
CREATE INDEX {ev_completed_idx} ON {events} (id) WHERE event = 'completed'


-- notify_function --
-- One NOTIFY per INSERT statement, however many rows it adds, on the table's own channel
-- (computed as resolve_schema computes it).
CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobq_' || left(TG_TABLE_NAME, 30) || '_'
                      || left(encode(sha256(convert_to(TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
                                                       'UTF8')), 'hex'), 12), '');
    RETURN NULL;
END
$$


-- notify_trigger --
-- Its trigger.
CREATE TRIGGER {notify_trigger} AFTER INSERT ON {jobs}
FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}()


-- rates_table --
-- Version 2: per-minute completion counts, folded from history one finished minute at a
-- time (the dashboard never aggregates history).
CREATE TABLE {rates} (
        minute timestamptz NOT NULL,
        type text NOT NULL,
        completed integer NOT NULL DEFAULT 0,
        failed integer NOT NULL DEFAULT 0,
        PRIMARY KEY (minute, type)
    )


-- failed_type_index --
-- The types with failed jobs, found by seeks.
CREATE INDEX {concurrently}IF NOT EXISTS {failed_type_idx} ON {jobs} (type) WHERE state = 'failed'


-- events_keys_dedupe --
-- Version 3: an idempotency key is held by its job's `enqueued` event, in one unique index
-- that a completion never empties, so an enqueue racing the completion of its key's job
-- cannot insert a second job. History keeps the key until `clear` removes that event; an
-- operator's delete frees it. Older duplicates (keys reused after a delete) give way to the
-- newest.
UPDATE {events} AS e SET idempotency_key = NULL
    WHERE e.event = 'enqueued' AND e.idempotency_key IS NOT NULL
      AND EXISTS (SELECT 1 FROM {events} AS n
                  WHERE n.event = 'enqueued' AND n.idempotency_key = e.idempotency_key
                    AND n.id > e.id)


-- events_key_index --
-- The index that holds the keys.
CREATE UNIQUE INDEX {concurrently}IF NOT EXISTS {ev_key_idx} ON {events} (idempotency_key)
WHERE event = 'enqueued' AND idempotency_key IS NOT NULL


-- events_key_holders_of_jobs --
-- Keys that only a live job held (an older `clear` removed their `enqueued` event) get a
-- holder event back, dated like what it stands for, so that no key becomes free by
-- migrating.
INSERT INTO {events} (occurred_at, job_id, type, event, request_id, idempotency_key,
                           reason)
    SELECT j.created_at, j.id, j.type, 'enqueued', j.request_id, j.idempotency_key,
           'key holder restored by migration 3'
    FROM {jobs} AS j
    WHERE j.idempotency_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM {events} AS e
                      WHERE e.event = 'enqueued' AND e.idempotency_key = j.idempotency_key)


-- events_key_holders_of_completions --
-- The same for keys that only a `completed` event held.
INSERT INTO {events} (occurred_at, job_id, type, event, request_id, idempotency_key,
                           reason)
    SELECT DISTINCT ON (c.idempotency_key) c.occurred_at, c.job_id, c.type, 'enqueued',
           c.request_id, c.idempotency_key, 'key holder restored by migration 3'
    FROM {events} AS c
    WHERE c.event = 'completed' AND c.idempotency_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM {events} AS e
                      WHERE e.event = 'enqueued' AND e.idempotency_key = c.idempotency_key)
    ORDER BY c.idempotency_key, c.id DESC


-- drop_events_idempotency_index --
-- The index of completed events by key goes.
DROP INDEX IF EXISTS {ev_idempotency_idx}


-- jobs_state_check --
-- Version 5: operator control. A `cancelled` state: terminal like `failed`, kept and
-- retryable, its time in failed_at (the time a job ended) and who and why in last_error. The
-- widened CHECKs are added NOT VALID: every existing row already meets them (they only admit
-- more), and validating would scan the tables under an exclusive lock.
ALTER TABLE {jobs} DROP CONSTRAINT IF EXISTS {state_check},
    ADD CONSTRAINT {state_check} CHECK (state IN ({states})) NOT VALID


-- jobs_lease_ms --
-- `lease_ms`, the length of the lease a holder keeps renewing, so a lease is judged against
-- its own length (a missed heartbeat, a bar that is full when fresh).
ALTER TABLE {jobs} ADD COLUMN IF NOT EXISTS lease_ms integer


-- events_event_check --
-- The events a cancel writes.
ALTER TABLE {events} DROP CONSTRAINT IF EXISTS {ev_event_check},
    ADD CONSTRAINT {ev_event_check} CHECK (event IN ({events_list})) NOT VALID


-- events_payload --
-- Completed jobs keep their payload in history (up to a size, see `Statements`).
ALTER TABLE {events} ADD COLUMN IF NOT EXISTS payload jsonb


-- cancelled_index --
-- Cancelled jobs by time.
CREATE INDEX {concurrently}IF NOT EXISTS {cancelled_idx} ON {jobs} (failed_at, id)
WHERE state = 'cancelled'


-- cancelled_type_index --
-- Like failed_type_index: status finds and counts each type's cancelled jobs by seeks, so a
-- mass cancel of a runaway backlog does not make every refresh read all of it.
CREATE INDEX {concurrently}IF NOT EXISTS {cancelled_type_idx} ON {jobs} (type)
WHERE state = 'cancelled'


-- pauses_table --
-- Paused types, which claims skip.
CREATE TABLE IF NOT EXISTS {pauses} (
        type text PRIMARY KEY,
        paused_at timestamptz NOT NULL DEFAULT now(),
        -- NULL: until resumed; otherwise claims take the type again from then on, unaided
        until timestamptz,
        paused_by text NOT NULL,
        reason text
    )


-- workers_table --
-- The registry of running workers.
CREATE TABLE IF NOT EXISTS {workers} (
        -- unique to one boot of one runner: host:pid:random
        id text PRIMARY KEY,
        -- what its claims write to claimed_by
        name text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        types text[] NOT NULL,
        concurrency integer NOT NULL,
        in_flight integer NOT NULL DEFAULT 0,
        -- seconds between its beats: it is lost once three are missed
        beat_seconds real NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        last_seen timestamptz NOT NULL DEFAULT now(),
        drain_requested_at timestamptz,
        drain_requested_by text,
        version text
    )


-- lease_type_index --
-- Version 6: claimed jobs by type and lease end, for the claims' expired-lease seeks. It
-- replaces the index by lease end alone rather than join it: every claim and heartbeat writes
-- the claimed jobs' index, and a second one cost 17% of batch claim throughput. Listings by
-- lease end sort the claimed rows, which the workers' slots bound.
CREATE INDEX {concurrently}IF NOT EXISTS {lease_type_idx} ON {jobs} (type, lease_until, id)
WHERE state = 'claimed'


-- drop_lease_index --
-- The index it replaces.
DROP INDEX IF EXISTS {lease_idx}


-- keys_table --
-- Version 7: history partitioned by time, and idempotency keys held in a table of their
-- own (see convert_history). The keys' table: one row per key, written by the enqueue's own
-- statement, with the same rules as version 3: a key is held until `clear` removes its job's
-- `enqueued` event (never while the job is live), or an operator deletes the job.
CREATE TABLE IF NOT EXISTS {keys} (
    key text PRIMARY KEY,
    job_id bigint NOT NULL
)


-- keyed_index --
-- The history's keyed `enqueued` events, which `clear` reads to free their keys; with their
-- job ids, so that a key's holder is read from the index alone.
CREATE INDEX {concurrently}IF NOT EXISTS {ev_keyed_idx} ON {events} (idempotency_key)
INCLUDE (job_id) WHERE event = 'enqueued' AND idempotency_key IS NOT NULL


-- ahead_function --
-- Make the history's daily partitions from `since` (by default, today) through `days` days
-- ahead, skipping days a partition covers, moving each new day's rows out of the DEFAULT
-- partition. SECURITY DEFINER, so that a worker role with no DDL rights keeps them ahead: it
-- only makes empty partitions for a window fixed by the clock, and its search_path is pinned
-- (ahead_search_path). One maker at a time; the others return at once. Returns how many it
-- made. The partitions are read from the catalog with their bounds (NULL: unbounded; the
-- DEFAULT partition has neither); bounds print in the session's own DateStyle and TimeZone,
-- so they read back exactly. Rows move by the history's columns as the catalog lists them, so
-- that a column a later version adds moves with them.
CREATE OR REPLACE FUNCTION {ahead_fn}(days integer,
                                              since timestamptz DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    parent regclass := {events_text}::regclass;
    upto timestamptz := date_trunc('day', now(), 'UTC') + days * interval '1 day';
    day timestamptz := date_trunc('day', coalesce(since, now()), 'UTC');
    nsp name;
    base name;
    dflt regclass;
    part text;
    made integer := 0;
    cols text := (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
                  FROM pg_attribute WHERE attrelid = parent AND attnum > 0 AND NOT attisdropped);
BEGIN
    IF since IS NULL AND (SELECT max(p.hi) FROM (
    -- the partitions of the history, with their bounds
    SELECT c.oid AS part, n.nspname AS nsp, c.relname AS name, c.relowner AS owner,
       b.bound = 'DEFAULT' AS is_default,
       CASE WHEN m[1] <> 'MINVALUE' THEN btrim(m[1], '''')::timestamptz END AS lo,
       CASE WHEN m[2] <> 'MAXVALUE' THEN btrim(m[2], '''')::timestamptz END AS hi
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) AS b
    LEFT JOIN LATERAL pg_catalog.regexp_match(b.bound, 'FROM \((.*)\) TO \((.*)\)') AS m
        ON true
    WHERE i.inhparent = parent) AS p) >= upto THEN
        RETURN 0;
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtextextended('jobq partitions ' || parent::oid, 0)) THEN
        RETURN 0;
    END IF;
    SELECT c.relnamespace::regnamespace::name, c.relname INTO nsp, base
    FROM pg_class AS c WHERE c.oid = parent;
    SELECT p.part INTO dflt FROM (
    -- the partitions of the history, with their bounds
    SELECT c.oid AS part, n.nspname AS nsp, c.relname AS name, c.relowner AS owner,
       b.bound = 'DEFAULT' AS is_default,
       CASE WHEN m[1] <> 'MINVALUE' THEN btrim(m[1], '''')::timestamptz END AS lo,
       CASE WHEN m[2] <> 'MAXVALUE' THEN btrim(m[2], '''')::timestamptz END AS hi
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) AS b
    LEFT JOIN LATERAL pg_catalog.regexp_match(b.bound, 'FROM \((.*)\) TO \((.*)\)') AS m
        ON true
    WHERE i.inhparent = parent) AS p WHERE p.is_default;
    WHILE day < upto LOOP
        IF NOT EXISTS (SELECT FROM (
    -- the partitions of the history, with their bounds
    SELECT c.oid AS part, n.nspname AS nsp, c.relname AS name, c.relowner AS owner,
       b.bound = 'DEFAULT' AS is_default,
       CASE WHEN m[1] <> 'MINVALUE' THEN btrim(m[1], '''')::timestamptz END AS lo,
       CASE WHEN m[2] <> 'MAXVALUE' THEN btrim(m[2], '''')::timestamptz END AS hi
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) AS b
    LEFT JOIN LATERAL pg_catalog.regexp_match(b.bound, 'FROM \((.*)\) TO \((.*)\)') AS m
        ON true
    WHERE i.inhparent = parent) AS p
                       WHERE NOT p.is_default
                         AND coalesce(p.lo, '-infinity') < day + interval '1 day'
                         AND coalesce(p.hi, 'infinity') > day) THEN
            -- Writers may be routing this day's rows to the DEFAULT partition right now, which
            -- would fail the attach: they wait while a day under way is made.
            IF day < now() + interval '1 hour' THEN
                EXECUTE format('LOCK TABLE %s IN SHARE MODE', parent);
            END IF;
            part := format('%I.%I', nsp,
                           base || '_' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'));
            EXECUTE format('CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           part, parent);
            IF dflt IS NOT NULL THEN
                EXECUTE format('WITH moved AS (DELETE FROM %s WHERE occurred_at >= $1 '
                               'AND occurred_at < $2 RETURNING %s) '
                               'INSERT INTO %s (%s) SELECT * FROM moved',
                               dflt, cols, part, cols)
                    USING day, day + interval '1 day';
            END IF;
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)',
                           parent, part, day, day + interval '1 day');
            made := made + 1;
        END IF;
        day := day + interval '1 day';
    END LOOP;
    RETURN made;
END
$fn$


-- ahead_search_path --
-- Resolved in the schema of the queue's tables, wherever they are, and never in one that
-- others may write to first (pg_temp last).
DO $do$
BEGIN
    EXECUTE format('ALTER FUNCTION %s(integer, timestamptz) SET search_path = pg_catalog, %I, '
                   'pg_temp', {ahead_text}::regproc,
                   (SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n
                      ON n.oid = c.relnamespace WHERE c.oid = {jobs_text}::regclass));
END
$do$


-- free_keys_function --
-- Before a partition is retired: free the keys of its `enqueued` events whose jobs are not
-- in the queue (outside the retirement's lock: an enqueue of such a key meanwhile is not held
-- up), and count its rows; the ids of the live ones are handed to retire_function, which
-- frees those whose jobs ended since. NULLs for a partition another clear retired meanwhile.
CREATE OR REPLACE FUNCTION {free_keys_fn}(part text, OUT rows bigint,
                                                  OUT held bigint[])
LANGUAGE plpgsql AS $fn$
BEGIN
    -- (the lock keeps it from going before this commits)
    EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE', part);
    EXECUTE format(
        'WITH keyed AS MATERIALIZED (SELECT idempotency_key, job_id FROM %1$s '
        '    WHERE event = ''enqueued'' AND idempotency_key IS NOT NULL), '
        'live AS MATERIALIZED (SELECT id FROM {jobs} '
        '    WHERE id IN (SELECT job_id FROM keyed)), '
        'freed AS (DELETE FROM {keys} AS k USING keyed '
        '    WHERE k.key = keyed.idempotency_key AND k.job_id = keyed.job_id '
        '      AND NOT EXISTS (SELECT 1 FROM live WHERE live.id = keyed.job_id)) '
        'SELECT (SELECT count(*) FROM %1$s), ARRAY(SELECT id FROM live)', part)
        INTO rows, held;
EXCEPTION WHEN undefined_table THEN
    RETURN;
END
$fn$


-- retire_function --
-- Retire one partition that lies wholly before a clear's cutoff: detach it, move the rows of
-- jobs still in the queue (their whole timeline stays) to where they now belong (the DEFAULT
-- partition), free the keys of `held` (live when the clear freed the others) whose jobs have
-- ended since, and drop it. It runs as the caller, so only the tables' owner can. The detach
-- waits at most a second for the history's readers and writers, who queue behind it; NULL
-- then (or when another clear retired it meanwhile), and the caller deletes the partition's
-- rows instead. Returns the rows kept. Both functions take a partition by its name as its
-- regclass printed it in the caller's session: unlike an OID, a name that is gone is an
-- error they can catch. Rows move by the history's columns as the catalog lists them, as in
-- ahead_function.
CREATE OR REPLACE FUNCTION {retire_fn}(part text, held bigint[])
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    parent regclass := {events_text}::regclass;
    patience text := current_setting('lock_timeout');
    low bigint;
    high bigint;
    live bigint[];
    moved bigint;
    cols text := (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
                  FROM pg_attribute WHERE attrelid = parent AND attnum > 0 AND NOT attisdropped);
BEGIN
    PERFORM set_config('lock_timeout', '1s', true);
    BEGIN
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, part);
    EXCEPTION WHEN lock_not_available OR undefined_table OR wrong_object_type THEN
        -- busy, or retired by another clear meanwhile
        PERFORM set_config('lock_timeout', patience, true);
        RETURN NULL;
    END;
    PERFORM set_config('lock_timeout', patience, true);
    -- Live jobs with events here: their ids lie within this partition's (literal bounds let
    -- the planner choose between seeking each such job and reading the partition).
    EXECUTE format('SELECT min(job_id), max(job_id) FROM %s', part) INTO low, high;
    EXECUTE format('SELECT ARRAY(SELECT j.id FROM {jobs} AS j WHERE j.id BETWEEN %L AND %L '
                   'AND EXISTS (SELECT FROM %s AS e WHERE e.job_id = j.id))', low, high, part)
        INTO live;
    EXECUTE format('DELETE FROM {keys} AS k USING %s AS e WHERE e.job_id = ANY($1) '
                   'AND e.event = ''enqueued'' AND e.idempotency_key = k.key '
                   'AND e.job_id = k.job_id', part)
        USING ARRAY(SELECT unnest(held) EXCEPT SELECT unnest(live));
    EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE '
                   'SELECT %s FROM %s WHERE job_id = ANY($1)', parent, cols, cols, part)
        USING live;
    GET DIAGNOSTICS moved = ROW_COUNT;
    EXECUTE format('DROP TABLE %s', part);
    RETURN moved;
END
$fn$


-- convert_history --
-- The conversion, in the migration's transaction.
--
-- History is RANGE-partitioned by occurred_at into UTC days, so that `clear` drops the days
-- it removes whole instead of deleting row by row: no dead rows for vacuum, and no cost per
-- row but for the rows of jobs still in the queue, which move to the DEFAULT partition. A day
-- is the natural grain for a retention given in days: a `clear --older-than 7d` deletes rows
-- from one day's partition at most, and drops the rest; a week of retention is about ten
-- partitions, few enough that reads without a time bound (a job's events, a trace) probe
-- each partition's index at little cost. Partitions are made 3 days ahead
-- (sql.HISTORY_AHEAD_DAYS, the 3 below) by `migrate` and by every fold of the rates (a runner
-- folds once a minute); a DEFAULT partition takes whatever no day covers, so no insert ever
-- fails, and making a day moves its rows out of it. A unique index on a partitioned table
-- must include the partition key, so the events can no longer hold keys (keys_table does).
--
-- The existing history becomes the first partition, {events_legacy}, covering everything up
-- to a bound in the next days, without being copied. Attaching it needs that bound proved:
-- an upgrade adds a CHECK constraint NOT VALID and validates it beforehand, outside the
-- migration (early_bound, early_validate_bound), while writers carry on; without it (a dry
-- run's plan applied by hand, or no direct connection) the attach scans the table under the
-- migration's lock. The id sequence carries on past every existing event id (the trace
-- follower relies on ids growing); the privileges on the history go to the new table, and to
-- the keys as far as they read or write rows. Empty (a fresh install), the old table simply
-- goes.
DO $convert$
DECLARE
    last_id bigint;
    called boolean;
    privileges aclitem[];
    bound timestamptz;
    grant_ record;
BEGIN
    LOCK TABLE {events} IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('SELECT last_value, is_called FROM %s',
                   pg_get_serial_sequence({events_text}, 'id')) INTO last_id, called;
    SELECT c.relacl INTO privileges FROM pg_class AS c WHERE c.oid = {events_text}::regclass;
    IF EXISTS (SELECT FROM {events}) THEN
        SELECT substring(pg_get_expr(con.conbin, con.conrelid) FROM '''([^'']*)''')::timestamptz
        INTO bound FROM pg_constraint AS con
        WHERE con.conrelid = {events_text}::regclass AND con.conname = {bound_name}
          AND con.convalidated;
        IF bound IS NULL THEN  -- no early check: the attach reads the whole table
            SELECT date_trunc('day', greatest(max(occurred_at), now()), 'UTC')
                   + interval '1 day' INTO bound FROM {events};
        END IF;
        ALTER TABLE {events} ALTER COLUMN id DROP IDENTITY;
        ALTER TABLE {events} RENAME TO {legacy_local};
        ALTER INDEX IF EXISTS {old_job_idx} RENAME TO {legacy_job_idx};
        ALTER INDEX IF EXISTS {old_request_idx} RENAME TO {legacy_request_idx};
        ALTER INDEX IF EXISTS {old_at_idx} RENAME TO {legacy_at_idx};
        ALTER INDEX IF EXISTS {old_completed_idx} RENAME TO {legacy_completed_idx};
        ALTER INDEX IF EXISTS {old_keyed_idx} RENAME TO {legacy_keyed_idx};
        DROP INDEX IF EXISTS {old_key_idx};
    ELSE
        DROP TABLE {events};
    END IF;
    CREATE TABLE {events} (
        id bigint GENERATED ALWAYS AS IDENTITY,
        occurred_at timestamptz NOT NULL DEFAULT now(),
        job_id bigint NOT NULL,
        type text NOT NULL,
        event text NOT NULL,
        request_id text,
        attempt integer NOT NULL DEFAULT 0,
        worker text,
        reason text,
        result jsonb,
        idempotency_key text,
        payload jsonb
    ) PARTITION BY RANGE (occurred_at);
    -- NOT VALID as version 5 left it on the old table, which must match to be attached; new
    -- partitions get it validated.
    ALTER TABLE {events} ADD CONSTRAINT {ev_event_check} CHECK (event IN ({events_list}))
        NOT VALID;
    CREATE INDEX {ev_job_idx} ON {events} (job_id, id);
    CREATE INDEX {ev_request_idx} ON {events} (request_id, id) WHERE request_id IS NOT NULL;
    CREATE INDEX {ev_at_idx} ON {events} USING brin (occurred_at);
    CREATE INDEX {ev_completed_idx} ON {events} (id) WHERE event = 'completed';
    CREATE INDEX {ev_keyed_idx} ON {events} (idempotency_key) INCLUDE (job_id)
        WHERE event = 'enqueued' AND idempotency_key IS NOT NULL;
    IF bound IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (MINVALUE) TO (%L)',
                       {events_text}::regclass, {legacy_text}::regclass, bound);
        ALTER TABLE {events_legacy} DROP CONSTRAINT IF EXISTS {ev_bound_check};
    END IF;
    CREATE TABLE {events_default} PARTITION OF {events} DEFAULT;
    PERFORM setval(pg_get_serial_sequence({events_text}, 'id'), last_id, called);
    FOR grant_ IN SELECT a.privilege_type AS what,
                         CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                             AS who,
                         CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END AS more
                  FROM aclexplode(privileges) AS a
                  WHERE a.grantee <> (SELECT relowner FROM pg_class
                                      WHERE oid = {events_text}::regclass) LOOP
        EXECUTE format('GRANT %s ON %s TO %s%s', grant_.what, {events_text}, grant_.who,
                       grant_.more);
        IF grant_.what IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE') THEN
            EXECUTE format('GRANT %s ON {keys} TO %s%s', grant_.what, grant_.who, grant_.more);
        END IF;
    END LOOP;
    PERFORM {ahead_fn}(3, coalesce(bound, now()));
END
$convert$


-- keys_copy_history --
-- Every key the history holds: copied early, in bulk, and caught up in the migration, under
-- its lock, by a merge of two index-only scans (0.44 s per 1M keys, benchmarks/README.md),
-- so that no key an older jobq took meanwhile is missed.
INSERT INTO {keys} (key, job_id)
    SELECT e.idempotency_key, e.job_id FROM {events} AS e
    WHERE e.event = 'enqueued' AND e.idempotency_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM {keys} AS k WHERE k.key = e.idempotency_key)
    ON CONFLICT (key) DO NOTHING


-- keys_copy_jobs --
-- Every key a live job holds, the same way.
INSERT INTO {keys} (key, job_id)
    SELECT idempotency_key, id FROM {jobs} WHERE idempotency_key IS NOT NULL
    ON CONFLICT (key) DO NOTHING


-- early_bound --
-- Before version 7, early: the bound, midnight (UTC) of the day after tomorrow, so that
-- writers of older jobq versions (whose rows are dated now) meet it until well after the
-- migration that follows at once. Adding it takes the table's lock for an instant, so a busy
-- table is not waited on for long; validating reads the table while writers carry on.
DO $do$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = {events_text}::regclass
                   AND conname = {bound_name}) THEN
        PERFORM set_config('lock_timeout', '2s', true);
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (occurred_at < %L) NOT VALID',
                       {events_text}::regclass, {bound_name},
                       date_trunc('day', now(), 'UTC') + interval '2 days');
    END IF;
END
$do$


-- early_validate_bound --
-- A table with rows dated beyond the bound keeps no constraint that later writes could trip
-- on: the migration then attaches it by a scan.
DO $do$
BEGIN
    ALTER TABLE {events} VALIDATE CONSTRAINT {ev_bound_check};
EXCEPTION WHEN check_violation THEN
    ALTER TABLE {events} DROP CONSTRAINT {ev_bound_check};
END
$do$


-- keys_free_stale --
-- No key that neither the history nor a live job holds: an earlier copy (an upgrade that did
-- not complete) may hold keys freed since. Early only: under the migration's lock it would
-- cost a second scan of every key, while only a key an older jobq freed in the moment between
-- it and the migration can slip through (and stays held).
DELETE FROM {keys} AS k
    WHERE NOT EXISTS (SELECT 1 FROM {events} AS e WHERE e.event = 'enqueued'
                      AND e.idempotency_key = k.key AND e.job_id = k.job_id)
      AND NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.idempotency_key = k.key)


-- keys_vacuum --
-- The early copy, vacuumed, so that the migration's catch-up reads indexes only.
VACUUM (ANALYZE) {keys}


-- jobs_autovacuum --
-- Version 8: the queue table is vacuumed by its dead rows, not by its size. Every job leaves
-- dead row versions behind (each claim, heartbeat and retry writes a new one; completion
-- deletes it), and by default autovacuum waits for 20% of the table to be dead: behind a
-- backlog of 1M jobs that is 200,000 dead versions that every claim's index seeks step over
-- before vacuum comes. A fixed threshold and no cost delay keep the table and its partial
-- indexes near their live size (benchmarks/bench_soak.py); analyze follows the same way, so
-- the status estimates track a backlog as it grows. SET takes a lock that no reader or
-- writer waits for.
ALTER TABLE {jobs} SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
                        autovacuum_vacuum_cost_delay = 0,
                        autovacuum_analyze_scale_factor = 0.02,
                        autovacuum_analyze_threshold = 1000)


-- early_lock --
-- One early builder at a time: the others wait by polling (early_wait), since a session
-- blocked in a lock wait holds a snapshot that CONCURRENTLY would wait for in turn.
SELECT pg_try_advisory_lock(hashtextextended(%(key)s, 2))


-- early_unlock --
-- Done building early.
SELECT pg_advisory_unlock(hashtextextended(%(key)s, 2))


-- early_held --
-- A migration holds the early builders' lock for its transaction, so that none of them has
-- an index half-built (and so invalid) while it decides what to build.
SELECT pg_try_advisory_xact_lock(hashtextextended(%(key)s, 2))


-- early_wait --
-- A pause between tries for the early builders' lock.
SELECT pg_sleep(0.2)


-- index_invalid --
-- Whether an index is an invalid leftover of a failed CONCURRENTLY build.
SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%(index)s)


-- index_drop --
-- Drop an index ({index}), CONCURRENTLY when building early.
DROP INDEX {concurrently}IF EXISTS {index}


-- schedules_table --
-- Version 9: periodic jobs' schedules (jobq_core/schedules.py), as the runners serving them
-- registered them, and the newest slot handled, which ticks move on under the row's lock.
CREATE TABLE IF NOT EXISTS {schedules} (
        name text PRIMARY KEY,
        -- a five-field expression read in the time zone tz, or an interval: one of the two
        cron text,
        tz text,
        every interval,
        -- what a tick does with slots no runner fired in time
        missed text NOT NULL CHECK (missed IN ('skip', 'latest', 'all')),
        last_slot timestamptz NOT NULL,
        last_job_id bigint,
        fired_at timestamptz,
        registered_at timestamptz NOT NULL DEFAULT now(),
        registered_by text NOT NULL,
        CHECK ((cron IS NULL) <> (every IS NULL)),
        CHECK (every > interval '0')
    )


-- limits_table --
-- Version 10: limits (jobq_core/limits.py), as the runners serving them registered them, and
-- each rate's token bucket, which claims spend under the row's lock.
CREATE TABLE IF NOT EXISTS {limits} (
        type text PRIMARY KEY,
        -- claimed jobs of the type at once, across every runner
        global_concurrency integer CHECK (global_concurrency > 0),
        -- claimed jobs of one key at once: the job's concurrency_key, else the payload's
        -- field key_field, else '' (one key for all the rest)
        key_concurrency integer CHECK (key_concurrency > 0),
        key_field text,
        -- claims started per period, in bursts of at most rate_burst
        rate_count integer CHECK (rate_count > 0),
        rate_period interval CHECK (rate_period > interval '0'),
        rate_burst integer CHECK (rate_burst > 0),
        tokens double precision NOT NULL DEFAULT 0,
        refilled_at timestamptz NOT NULL DEFAULT now(),
        -- the same per key, each key's bucket in {limit_keys}
        key_rate_count integer CHECK (key_rate_count > 0),
        key_rate_period interval CHECK (key_rate_period > interval '0'),
        key_rate_burst integer CHECK (key_rate_burst > 0),
        registered_at timestamptz NOT NULL DEFAULT now(),
        registered_by text NOT NULL,
        CHECK (num_nonnulls(global_concurrency, key_concurrency, rate_count,
                            key_rate_count) > 0),
        CHECK ((rate_count IS NULL) = (rate_period IS NULL)
               AND (rate_count IS NULL) = (rate_burst IS NULL)),
        CHECK ((key_rate_count IS NULL) = (key_rate_period IS NULL)
               AND (key_rate_count IS NULL) = (key_rate_burst IS NULL)),
        CHECK (key_field IS NULL OR key_concurrency IS NOT NULL
               OR key_rate_count IS NOT NULL)
    )


-- limit_keys_table --
-- The buckets of a per-key rate that are not full: a key's row says when its bucket is full
-- again (full_at). A key with no row has a full bucket; each claim of the type deletes the
-- rows of buckets that are full again.
CREATE TABLE IF NOT EXISTS {limit_keys} (
        type text NOT NULL,
        key text NOT NULL,
        tokens double precision NOT NULL,
        refilled_at timestamptz NOT NULL,
        full_at timestamptz NOT NULL,
        PRIMARY KEY (type, key)
    )


-- limit_keys_index --
-- The keys of a type whose buckets are filling.
CREATE INDEX IF NOT EXISTS {limit_keys_idx} ON {limit_keys} (type, full_at)


-- jobs_concurrency_key --
-- The key a key limit counts a job under, when its producer gave one (no default: adding the
-- column rewrites nothing).
ALTER TABLE {jobs} ADD COLUMN IF NOT EXISTS concurrency_key text


-- limit_lanes_table --
-- Version 11: each limited type's limits split into lanes, so that claims of the type do not
-- wait for each other: a claim locks one lane's row (limits_function) until it commits, and
-- starts jobs within that lane's share. Lane n of a type's `lanes` holds a `lanes`-th of each
-- limit, the remainders going to the first lanes, and of the rate: its own token bucket.
CREATE TABLE IF NOT EXISTS {limit_lanes} (
        type text NOT NULL,
        lane smallint NOT NULL,
        tokens double precision NOT NULL DEFAULT 0,
        refilled_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (type, lane)
    )


-- limits_lanes --
-- How many lanes a type's limits have: up to 8 claims of the type at once, each lane with a
-- share of at least 4 of every limit, as a claim starts jobs from one lane only (a limit of 5
-- keeps one lane: a small limit binds anyway, and one claim may take all of it).
ALTER TABLE {limits} ADD COLUMN IF NOT EXISTS lanes smallint NOT NULL
    GENERATED ALWAYS AS (greatest(1, least(8, global_concurrency / 4, key_concurrency / 4,
                                           rate_burst / 4, key_rate_burst / 4))) STORED


-- limits_lanes_fill --
-- The lanes of the limits that version 10 registered. Their buckets start empty and fill at
-- the rate, as a new type's do: the statement reads no column of version 10's that version 11
-- drops, so that applying it again stays harmless.
INSERT INTO {limit_lanes} (type, lane, tokens, refilled_at)
SELECT l.type, n, 0, clock_timestamp()
FROM {limits} AS l CROSS JOIN generate_series(0, l.lanes - 1) AS n
ON CONFLICT DO NOTHING


-- limits_drop_tokens --
-- The buckets are the lanes' now.
ALTER TABLE {limits} DROP COLUMN IF EXISTS tokens, DROP COLUMN IF EXISTS refilled_at


-- limit_keys_empty --
-- Version 11: a per-key rate's buckets are per lane. Those filling are dropped (full again):
-- a key's tokens cannot be told apart by lane.
DELETE FROM {limit_keys}


-- limit_keys_lane --
-- The lane of a key's bucket, in its primary key (the table kept, with its grants; empty,
-- so the column needs no default).
ALTER TABLE {limit_keys}
    ADD COLUMN IF NOT EXISTS lane smallint NOT NULL,
    DROP CONSTRAINT IF EXISTS {limit_keys_pkey},
    ADD CONSTRAINT {limit_keys_pkey} PRIMARY KEY (type, lane, key)


-- limit_keys_index_drop --
-- Version 10's index of filling buckets, without the lane.
DROP INDEX IF EXISTS {limit_keys_idx}


-- limit_keys_lanes_index --
-- The keys of a type's lane whose buckets are filling.
CREATE INDEX IF NOT EXISTS {limit_keys_lane_idx} ON {limit_keys} (type, lane, full_at)


-- jobs_limit_lane --
-- The lane whose share a claimed job of a limited type holds (no default: adding the column
-- rewrites nothing). A job taken back from a dead holder keeps it.
ALTER TABLE {jobs} ADD COLUMN IF NOT EXISTS limit_lane smallint


-- limits_function_drop --
-- Version 10's function, whose result had no lane.
DROP FUNCTION IF EXISTS {limits_fn}(text[])


-- limits_function --
-- What limits leave free for a claim of these types: per type, a lane it locked, and what
-- that lane leaves free. The types go in name order; each type's lanes are tried in order,
-- each locked without waiting (SKIP LOCKED), and the first with room and no full key is kept;
-- failing that, the tried lane with room and the fewest full keys (a key's share in one lane
-- may be used up while another lane has room for it). The lanes tried stay locked, and others
-- pass them by. Only when every lane of a type is locked does the claim wait, for one lane
-- picked by its backend's pid. Locks are thus taken in (type, lane) order, as limit_register
-- takes them, so claims and registrations never deadlock. A type whose lanes are all gone
-- (its limits changed under the claim) gets a `cap` of 0.
--
-- What a lane leaves free: its share of each limit, less what it holds. What is in use is
-- counted by a query of its own: a VOLATILE function's query sees what committed before it
-- began, so it sees the claims that held the lane before, which the calling statement's older
-- snapshot cannot. A lane's jobs are the
-- claimed jobs of the type in it, expired leases included (their slots pass to whoever takes
-- them back), and the claimed jobs in no current lane (claimed before the limit, or in a lane
-- that a smaller limit dropped), which count against every lane: the shares add up to the
-- limit, so the limit holds. The lane's keys whose buckets are full again lose their rows
-- first (each claim of the lane keeps it so).
--
-- Per type: the type; its lane; `cap`, how many jobs may start (the lane's free slots, and its
-- whole tokens), NULL for no such limit; the lane's share of the key limit, the key field,
-- the keys in use in the lane with their counts, and those that are full (no slot, or no whole
-- token of a per-key rate); the lane's tokens now, with the clock read; and the tokens of each
-- key whose bucket in the lane is filling, with the lane's share of the per-key rate.
CREATE FUNCTION {limits_fn}(types text[])
RETURNS TABLE (type text, lane smallint, cap integer, key_limit integer, key_field text,
               key_used jsonb, full_keys text[], tokens double precision, at timestamptz,
               key_tokens jsonb, key_rate_count double precision, key_rate_period interval,
               key_rate_burst integer)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    limited record;
    candidate smallint;
    tried boolean;
    r record;
    best record;
    fewest integer;
BEGIN
    FOR limited IN
        SELECT l.type AS name, l.lanes, l.key_rate_count IS NOT NULL AS key_rate
        FROM {limits} AS l WHERE l.type = ANY(types) ORDER BY l.type
    LOOP
        tried := false;
        fewest := NULL;
        <<passes>>
        FOR pass IN 1..2 LOOP
            IF pass = 2 THEN
                -- every lane was locked: wait for one (a lane this claim then holds is not
                -- skipped), and try again
                PERFORM FROM {limit_lanes} AS n
                WHERE n.type = limited.name AND n.lane = mod(pg_backend_pid(), limited.lanes)
                FOR UPDATE;
            END IF;
            candidate := -1;
            LOOP
                -- One lane at a time: a FOR loop over the lanes would fetch, and lock, them
                -- all. The type's number of lanes is read again: a registration may have
                -- changed it since this function began (and none changes it while this
                -- claim holds the lane: a registration that remakes lanes locks them all).
                SELECT n.lane INTO candidate
                FROM {limit_lanes} AS n JOIN {limits} AS l ON l.type = n.type
                WHERE n.type = limited.name AND n.lane > candidate AND n.lane < l.lanes
                ORDER BY n.lane LIMIT 1 FOR UPDATE OF n SKIP LOCKED;
                EXIT WHEN NOT FOUND;
                tried := true;
                IF limited.key_rate THEN
                    -- the lane's keys whose buckets are full again need no row
                    DELETE FROM {limit_keys} AS k
                    WHERE k.type = limited.name AND k.lane = candidate
                      AND k.full_at <= clock_timestamp();
                END IF;
                SELECT l.type, n.lane,
                       CASE WHEN l.global_concurrency IS NOT NULL OR b.tokens IS NOT NULL
                            THEN greatest(0, least(s.global_concurrency - u.in_use,
                                                   floor(b.tokens)::integer)) END AS cap,
                       s.key_concurrency AS key_limit, l.key_field, u.key_used,
                       CASE WHEN l.key_concurrency IS NOT NULL OR l.key_rate_count IS NOT NULL
                       THEN ARRAY(SELECT e.k FROM jsonb_each_text(u.key_used) AS e(k, n)
                                  WHERE e.n::integer >= s.key_concurrency
                                  UNION
                                  SELECT e.k FROM jsonb_each_text(kt.key_tokens) AS e(k, t)
                                  WHERE e.t::float8 < 1) END AS full_keys,
                       b.tokens, c.clock AS at, kt.key_tokens,
                       l.key_rate_count::float8 / l.lanes AS key_rate_count,
                       l.key_rate_period, s.key_rate_burst
                INTO r
                FROM {limits} AS l
                JOIN {limit_lanes} AS n ON n.type = l.type AND n.lane = candidate
                CROSS JOIN (SELECT clock_timestamp() AS clock) AS c
                CROSS JOIN LATERAL (
                    -- the lane's share of each limit: a lanes-th, one more for the first lanes
                    SELECT l.global_concurrency / l.lanes
                               + (n.lane < mod(l.global_concurrency, l.lanes))::int
                               AS global_concurrency,
                           l.key_concurrency / l.lanes
                               + (n.lane < mod(l.key_concurrency, l.lanes))::int
                               AS key_concurrency,
                           l.rate_burst / l.lanes
                               + (n.lane < mod(l.rate_burst, l.lanes))::int AS rate_burst,
                           l.key_rate_burst / l.lanes
                               + (n.lane < mod(l.key_rate_burst, l.lanes))::int
                               AS key_rate_burst
                ) AS s
                CROSS JOIN LATERAL (
                    -- claimed jobs by key only for a key limit: reading a key may read the
                    -- payload
                    SELECT coalesce(sum(k.n), 0)::integer AS in_use,
                           coalesce(jsonb_object_agg(k.key, k.n) FILTER (WHERE k.key IS NOT NULL),
                                    '{{}}') AS key_used
                    FROM (SELECT CASE WHEN l.key_concurrency IS NOT NULL
                                      THEN coalesce(j.concurrency_key, j.payload ->> l.key_field,
                                                    '')
                                 END AS key,
                                 count(*) AS n
                          FROM {jobs} AS j
                          WHERE j.state = 'claimed' AND j.type = l.type
                            AND (j.limit_lane IS NULL OR j.limit_lane = n.lane
                                 OR j.limit_lane >= l.lanes)
                          GROUP BY 1) AS k
                ) AS u
                CROSS JOIN LATERAL (
                    SELECT CASE WHEN l.rate_count IS NOT NULL THEN
                               least(s.rate_burst::float8,
                                     n.tokens + l.rate_count::float8 / l.lanes
                                       * greatest(0, extract(epoch FROM c.clock - n.refilled_at))
                                       / extract(epoch FROM l.rate_period)) END AS tokens
                ) AS b
                CROSS JOIN LATERAL (
                    SELECT coalesce(jsonb_object_agg(k.key, least(s.key_rate_burst::float8,
                               k.tokens + l.key_rate_count::float8 / l.lanes
                                 * greatest(0, extract(epoch FROM c.clock - k.refilled_at))
                                 / extract(epoch FROM l.key_rate_period))), '{{}}') AS key_tokens
                    FROM {limit_keys} AS k
                    WHERE l.key_rate_count IS NOT NULL AND k.type = l.type AND k.lane = n.lane
                      AND k.full_at > c.clock
                ) AS kt
                WHERE l.type = limited.name AND n.lane = candidate;
                CONTINUE WHEN r.cap = 0;
                IF fewest IS NULL OR coalesce(cardinality(r.full_keys), 0) < fewest THEN
                    best := r;
                    fewest := coalesce(cardinality(r.full_keys), 0);
                END IF;
                EXIT passes WHEN fewest = 0;
            END LOOP;
            -- lanes tried: the best of them, or the last, full (the limit is reached)
            EXIT WHEN tried;
        END LOOP;
        IF fewest IS NOT NULL THEN
            r := best;
        END IF;
        IF tried THEN
            RETURN QUERY SELECT r.type, r.lane, r.cap, r.key_limit, r.key_field, r.key_used,
                                r.full_keys, r.tokens, r.at, r.key_tokens, r.key_rate_count,
                                r.key_rate_period, r.key_rate_burst;
        ELSE
            -- no lane to be had (the limits changed under this claim): nothing starts
            RETURN QUERY SELECT limited.name, NULL::smallint, 0, NULL::integer, NULL::text,
                                NULL::jsonb, NULL::text[], NULL::float8, NULL::timestamptz,
                                NULL::jsonb, NULL::float8, NULL::interval, NULL::integer;
        END IF;
    END LOOP;
END
$fn$


-- jobs_trace_context --
-- The W3C trace context (traceparent, tracestate) of the span that enqueued the job, if any:
-- each attempt's span is its child (`jobq_core.tracing`). Nullable without a default, so
-- adding the columns rewrites nothing.
ALTER TABLE {jobs} ADD COLUMN IF NOT EXISTS traceparent text,
                   ADD COLUMN IF NOT EXISTS tracestate text


-- events_trace_context --
-- The same beside the request id of the `enqueued` event, which outlives the job; added to
-- the partitioned history, it reaches every partition, catalog only.
ALTER TABLE {events} ADD COLUMN IF NOT EXISTS traceparent text,
                     ADD COLUMN IF NOT EXISTS tracestate text

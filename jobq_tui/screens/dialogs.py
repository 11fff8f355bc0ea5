"""Modal dialogs: confirmations sized to the risk, prompts, and help from the live bindings.

Every confirmation starts on Cancel, so a stray `enter` never destroys anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Static

from jobq_core import JobqError


class ConfirmScreen(ModalScreen[bool]):
    """A y/N question with the count in it; Cancel has the focus."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "confirm", "Yes", show=True), Binding("n", "cancel", "No"),
                Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, body: Text, confirm_label: str, *,
                 danger: bool = False) -> None:
        super().__init__(classes="dialog")
        self._title = title
        self._body = body
        self._confirm_label = confirm_label
        self._danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(self._title), id="dialog-title")
            yield Static(self._body, id="dialog-body")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel", id="cancel", variant="primary")
                yield Button(f"{self._confirm_label} (y)", id="confirm",
                             variant="error" if self._danger else "warning")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    @on(Button.Pressed, "#confirm")
    def action_confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(False)


class ReasonConfirmScreen(ModalScreen[str | None]):
    """A y/N question that also takes an optional reason (for cancel, whose reason is
    recorded with the job). Back has the focus; the answer is the reason ("" for none), or
    None for back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "confirm", "Yes", show=True), Binding("n", "back", "No"),
        Binding("escape", "back", "Back")]

    def __init__(self, title: str, body: Text, confirm_label: str) -> None:
        super().__init__(classes="dialog")
        self._title = title
        self._body = body
        self._confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(self._title), id="dialog-title")
            yield Static(self._body, id="dialog-body")
            yield Input(placeholder="reason (optional; enter here confirms)",
                        id="dialog-input")
            with Horizontal(id="dialog-buttons"):
                yield Button("Back", id="back", variant="primary")
                yield Button(f"{self._confirm_label} (y)", id="confirm", variant="error")

    def on_mount(self) -> None:
        self.query_one("#back", Button).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#confirm")
    def action_confirm(self) -> None:
        self.dismiss(self.query_one(Input).value.strip())

    @on(Button.Pressed, "#back")
    def action_back(self) -> None:
        self.dismiss(None)


class TypeToConfirmScreen(ModalScreen[bool]):
    """For deletes and clears: the operator types the number of rows to go ahead."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, body: Text, expected: str, confirm_label: str) -> None:
        super().__init__(classes="dialog")
        self._title = title
        self._body = body
        self.expected = expected
        self._confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(self._title), id="dialog-title")
            yield Static(self._body, id="dialog-body")
            yield Static(Text(f"Type {self.expected} to confirm:"), id="dialog-hint")
            yield Input(placeholder=self.expected, id="dialog-input")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel", id="cancel", variant="primary")
                yield Button(self._confirm_label, id="confirm", variant="error",
                             disabled=True)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Changed)
    def _typed(self, event: Input.Changed) -> None:
        self.query_one("#confirm", Button).disabled = event.value.strip() != self.expected

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip() == self.expected:
            self.dismiss(True)
        else:
            self.notify(f"Type {self.expected} exactly, or press escape to cancel.",
                        severity="warning", markup=False)

    @on(Button.Pressed, "#confirm")
    def _confirmed(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(False)


class PromptScreen(ModalScreen[str | None]):
    """One line of input, checked by `validate` (which raises `JobqError` with the reason)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, *, placeholder: str = "", value: str = "",
                 validate: Callable[[str], object] | None = None, hint: str = "") -> None:
        super().__init__(classes="dialog prompt")
        self._title = title
        self._placeholder = placeholder
        self._value = value
        self._validate = validate
        self._hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(self._title), id="dialog-title")
            yield Input(value=self._value, placeholder=self._placeholder, id="dialog-input")
            yield Static(Text(self._hint, style="dim"), id="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if self._validate is not None:
            try:
                self._validate(value)
            except JobqError as exc:
                self.query_one("#dialog-hint", Static).update(Text(str(exc), style="red"))
                return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """Every key that works on the screen below, read from its live bindings."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, title: str, rows: list[tuple[str, str, str]], notes: list[str]) -> None:
        super().__init__(classes="dialog help")
        self._title = title
        self._rows = rows
        self._notes = notes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(self._title), id="dialog-title")
            table: DataTable[Text] = DataTable(id="help-table", cursor_type="row",
                                               zebra_stripes=True)
            yield table
            yield Static(Text("\n".join(self._notes), style="dim"), id="dialog-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("key", "action", "")
        for key, description, state in self._rows:
            table.add_row(Text(key, style="bold"), Text(description),
                          Text(state, style="dim red" if state else ""))
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)

"""Command registry and execution: ``<extension>.<command>`` to handlers, results, busy rule.

The one place that maps command names to handlers. Results follow docs/protocol.md
("Command results") exactly; any exception inside a handler becomes a ``command_error``, never
an unserialisable object (IPA's defect).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import logging
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wire.protocol import CLEAN_VERSION_MISMATCH, FAILED, RUNNING, SUCCEEDED
from wire.protocol import command_error as error_shape

LOG = logging.getLogger(__name__)
__all__ = ["CLEAN_VERSION_MISMATCH", "FAILED", "RUNNING", "SUCCEEDED"]

Handler = Callable[..., Awaitable[Any]]


class CommandError(Exception):
    """An error with an HTTP-style code, reported as ``command_error``."""

    code = 500

    def __init__(self, message: str, details: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code

    def serialize(self) -> dict[str, Any]:
        return error_shape(type(self).__name__, self.code, self.message, self.details)


class InvalidCommandError(CommandError):
    """The request names no valid command (400)."""

    code = 400


class InvalidCommandParamsError(InvalidCommandError):
    def __init__(self, details: str) -> None:
        super().__init__(f"Invalid command parameters: {details}", details)


class ExtensionNotFound(CommandError):
    code = 404


class RequestedObjectNotFoundError(CommandError):
    code = 404


class AgentIsBusy(CommandError):
    code = 409

    def __init__(self, command_name: str) -> None:
        super().__init__(f"Agent is busy: command {command_name} is still running")


def error_from_exception(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, CommandError):
        return exc.serialize()
    return error_shape(
        type(exc).__name__,
        500,
        str(exc) or type(exc).__name__,
        "".join(traceback.format_exception_only(type(exc), exc)).strip(),
    )


@dataclass(frozen=True)
class Param:
    types: tuple[type, ...]
    required: bool = False
    nullable: bool = True
    # What can be refused from the value alone, so that even an async command answers
    # 400 at once; raises InvalidCommandParamsError.
    check: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class Command:
    extension: str
    name: str
    handler: Handler
    is_async: bool
    params: Mapping[str, Param]

    def validate(self, params: Mapping[str, Any]) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise InvalidCommandParamsError(f"unexpected parameter(s) {', '.join(unknown)}")
        for name, spec in self.params.items():
            if name not in params:
                if spec.required:
                    raise InvalidCommandParamsError(f"missing required parameter {name}")
                continue
            value = params[name]
            if value is None and spec.nullable and not spec.required:
                continue
            # bool is an int subclass; never accept it where a number is meant
            if not isinstance(value, spec.types) or (
                isinstance(value, bool) and bool not in spec.types
            ):
                wanted = " or ".join(_json_type(t) for t in spec.types)
                raise InvalidCommandParamsError(
                    f"{name} must be {wanted}, not {_json_type(type(value))}"
                )
            if spec.check is not None and value is not None:
                spec.check(value)


def _json_type(kind: type) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(kind, kind.__name__)


class Registry:
    def __init__(self) -> None:
        self.commands: dict[str, dict[str, Command]] = {}

    def add(
        self,
        extension: str,
        name: str,
        handler: Handler,
        *,
        is_async: bool = False,
        params: Mapping[str, Param] | None = None,
    ) -> None:
        self.commands.setdefault(extension, {})[name] = Command(
            extension, name, handler, is_async, dict(params or {})
        )

    def find(self, full_name: Any) -> Command:
        if not isinstance(full_name, str) or not full_name:
            raise InvalidCommandError("Invalid command: name must be a non-empty string")
        extension, dot, name = full_name.partition(".")
        if not dot or not extension or not name:
            raise InvalidCommandError(
                f"Invalid command name {full_name!r}: expected <extension>.<command>"
            )
        if extension not in self.commands:
            raise ExtensionNotFound(f"Extension {extension} not found")
        if name not in self.commands[extension]:
            raise InvalidCommandError(f"Unknown command {name} of extension {extension}")
        return self.commands[extension][name]


@dataclass
class CommandResult:
    command_name: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    command_status: str = RUNNING
    command_error: dict[str, Any] | None = None
    command_result: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    live: Callable[[], dict[str, Any]] | None = field(default=None, repr=False)

    def serialize(self) -> dict[str, Any]:
        result = self.command_result
        if self.command_status == RUNNING and self.live is not None:
            result = self.live()
        return {
            "id": self.id,
            "command_name": self.command_name,
            "command_status": self.command_status,
            "command_error": self.command_error,
            "command_result": result,
        }

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        if error is not None:
            self.command_status = getattr(error, "status", FAILED)
            self.command_error = error_from_exception(error)
        else:
            self.command_status = SUCCEEDED
            self.command_result = result
        self.done.set()


_CURRENT: contextvars.ContextVar[CommandResult | None] = contextvars.ContextVar(
    "tacet_current_command", default=None
)


def report_progress(live: Callable[[], dict[str, Any]] | None) -> None:
    """Show ``live()`` as the running command's ``command_result`` until it ends (image
    writes report bytes and rate this way). Outside a command it does nothing."""
    result = _CURRENT.get()
    if result is not None:
        result.live = live


def shape_result(command: Command, value: Any) -> dict[str, Any] | None:
    """IPA's result shape: a string becomes ``{"result": ...}`` (prefixed for async)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = f"{command.name}: {value}" if command.is_async else value
        return {"result": text}
    if isinstance(value, dict):
        return value
    return {"result": value}


class Executor:
    """Runs commands one at a time and keeps a bounded, ordered history."""

    def __init__(
        self,
        registry: Registry,
        history_limit: int = 100,
        on_async_done: Callable[[CommandResult], None] | None = None,
    ) -> None:
        self.registry = registry
        self.history_limit = history_limit
        self.results: collections.OrderedDict[str, CommandResult] = collections.OrderedDict()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.on_async_done = on_async_done

    def running(self) -> CommandResult | None:
        for result in reversed(self.results.values()):
            if result.command_status == RUNNING:
                return result
        return None

    def _remember(self, result: CommandResult) -> None:
        self.results[result.id] = result
        while len(self.results) > self.history_limit:
            oldest = next((r for r in self.results.values() if r.command_status != RUNNING), None)
            if oldest is None:
                break
            del self.results[oldest.id]

    async def execute(self, full_name: Any, params: Any) -> CommandResult:
        command = self.registry.find(full_name)
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidCommandParamsError("params must be an object")
        busy = self.running()
        if busy is not None:
            raise AgentIsBusy(busy.command_name)
        command.validate(params)
        result = CommandResult(command_name=command.name)
        self._remember(result)
        if command.is_async:
            task = asyncio.create_task(self._run(command, params, result))
            self.tasks[result.id] = task
            task.add_done_callback(functools.partial(self._forget_task, result.id))
        else:
            await self._run(command, params, result)
        return result

    def _forget_task(self, result_id: str, _task: asyncio.Task[None]) -> None:
        self.tasks.pop(result_id, None)

    async def _run(self, command: Command, params: dict[str, Any], result: CommandResult) -> None:
        LOG.info("command %s.%s started (%s)", command.extension, command.name, result.id)
        token = _CURRENT.set(result)
        try:
            value = await command.handler(**params)
            result.finish(shape_result(command, value))
        except asyncio.CancelledError as exc:
            result.finish(
                error=CommandError(f"interrupted: {exc.args[0] if exc.args else 'agent stopping'}")
            )
            raise
        except Exception as exc:
            LOG.warning("command %s.%s failed: %s", command.extension, command.name, exc)
            result.finish(error=exc)
        finally:
            _CURRENT.reset(token)
            result.live = None
        LOG.info("command %s ended %s", result.id, result.command_status)
        if command.is_async and self.on_async_done is not None:
            self.on_async_done(result)

    def get(self, result_id: str) -> CommandResult:
        try:
            return self.results[result_id]
        except KeyError:
            raise RequestedObjectNotFoundError(f"Command result {result_id} not found") from None

    def history(self) -> list[dict[str, Any]]:
        return [result.serialize() for result in self.results.values()]

    async def stop(self, reason: str) -> None:
        """Cancel running commands; each is recorded FAILED with the reason."""
        for task in list(self.tasks.values()):
            task.cancel(reason)
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

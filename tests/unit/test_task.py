"""The task contract: what run_task alone decides (diff, warnings, durations, closing clients, errors)."""

from __future__ import annotations

import dataclasses
import typing as t

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, options_from, run_task)


class Exited(Exception):
    def __init__(self, failed: bool, result: t.Dict[str, t.Any]) -> None:
        super().__init__(result.get("msg"))
        self.failed = failed
        self.result = result


class FakeModule:
    """Stands in for AnsibleModule: run_task's pure decisions need only these attributes."""

    def __init__(self, params: t.Dict[str, t.Any], check_mode: bool = False, diff: bool = False) -> None:
        self.params = params
        self.check_mode = check_mode
        self._diff = diff
        self.warned: t.List[str] = []

    def warn(self, message: str) -> None:
        self.warned.append(message)

    def exit_json(self, **result: t.Any) -> None:
        raise Exited(False, result)

    def fail_json(self, msg: str, **result: t.Any) -> None:
        raise Exited(True, dict(result, msg=msg))


@dataclasses.dataclass(frozen=True)
class Options:
    name: str
    count: int


class Client:
    opened: t.List["Client"] = []

    def __init__(self, params: t.Mapping[str, t.Any]) -> None:
        self.closed = False
        self.name = params["name"]
        Client.opened.append(self)

    def close(self) -> None:
        self.closed = True


def run(module: FakeModule, action: t.Callable[[Task[Options]], Result]) -> Exited:
    with pytest.raises(Exited) as exited:
        run_task(t.cast(t.Any, module), lambda params: options_from(Options, params), action)
    return exited.value


def test_diff_leaves_only_when_asked():
    def action(task: Task[Options]) -> Result:
        return {"changed": True, "msg": "done", "diff": {"before": "a", "after": "b"}}

    assert "diff" not in run(FakeModule({"name": "x", "count": 1}), action).result
    assert run(FakeModule({"name": "x", "count": 1}, diff=True), action).result["diff"] == {"before": "a", "after": "b"}


def test_every_result_has_changed_and_duration_and_warnings_go_through_warn():
    def action(task: Task[Options]) -> Result:
        task.warn("careful")
        task.warn("careful")
        return {"msg": "%s x%d" % (task.options.name, task.options.count)}

    module = FakeModule({"name": "x", "count": 2})
    exited = run(module, action)
    assert not exited.failed
    assert exited.result["changed"] is False and exited.result["msg"] == "x x2"
    assert isinstance(exited.result["duration_s"], float)
    assert module.warned == ["careful"]
    assert "warnings" not in exited.result


def test_a_failure_keeps_the_partial_result_and_its_warnings():
    def action(task: Task[Options]) -> Result:
        task.warn("half done")
        raise RunbookError.keeping("step two failed", {"changed": True, "done": ["one"], "msg": "half of it"})

    module = FakeModule({"name": "x", "count": 1})
    exited = run(module, action)
    assert exited.failed
    assert exited.result["msg"] == "step two failed"
    assert exited.result["done"] == ["one"] and exited.result["changed"] is True
    assert module.warned == ["half done"]


def test_an_unexpected_error_is_named_with_its_traceback_not_raised():
    def action(task: Task[Options]) -> Result:
        raise KeyError("boom")

    exited = run(FakeModule({"name": "x", "count": 1}), action)
    assert exited.failed and exited.result["msg"] == "unexpected KeyError: 'boom'"
    assert "Traceback" in exited.result["exception"]


def test_bad_options_fail_before_the_action_runs():
    called = []

    def parse(params: t.Mapping[str, t.Any]) -> Options:
        raise RunbookError("count: must be positive")

    module = FakeModule({"name": "x", "count": -1})
    with pytest.raises(Exited) as exited:
        run_task(t.cast(t.Any, module), parse, lambda task: called.append(1) or {})
    assert exited.value.failed and exited.value.result["msg"] == "count: must be positive"
    assert not called


@pytest.mark.parametrize("fail", [False, True])
def test_clients_open_once_and_close_on_every_exit_path(fail):
    Client.opened = []

    def action(task: Task[Options]) -> Result:
        first = task.client(Client)
        assert task.client(Client) is first
        if fail:
            raise RunbookError("no")
        return {"msg": first.name}

    exited = run(FakeModule({"name": "kube", "count": 1}), action)
    assert exited.failed is fail
    assert len(Client.opened) == 1 and Client.opened[0].closed


def test_a_provided_client_is_used_and_left_open():
    held = Client({"name": "mine"})
    task = Task(Options("x", 1), {"name": "x"})
    task.provide(Client, held)
    with task:
        assert task.client(Client) is held
    assert not held.closed


def test_options_from_takes_spec_values_and_converted_fields():
    assert options_from(Options, {"name": "a", "count": 3, "other": 1}) == Options("a", 3)
    assert options_from(Options, {"name": "a", "count": "3"}, count=3) == Options("a", 3)
    with pytest.raises(TypeError):
        options_from(Options, {"name": "a"})


class Tunnel(Client):
    """A client that can break under the task (as a port-forward tunnel does)."""

    broke = ""

    def failure(self) -> str:
        return Tunnel.broke

    def check(self) -> None:
        if Tunnel.broke:
            raise RunbookError(Tunnel.broke)


def test_a_broken_client_is_named_in_the_failure_and_stops_a_commit():
    Tunnel.broke = "tunnel to pod/db broke mid-stream"

    def action(task: Task[Options]) -> Result:
        task.client(Tunnel)
        try:
            task.verify_clients()
        except RunbookError:
            raise RunbookError("pg_dump exited with status 1") from None
        return {"msg": "committed"}

    exited = run(FakeModule({"name": "x", "count": 1}), action)
    assert exited.failed
    assert exited.result["msg"] == "tunnel to pod/db broke mid-stream; pg_dump exited with status 1"
    Tunnel.broke = ""
    assert not run(FakeModule({"name": "x", "count": 1}), action).failed


def test_an_adopted_client_is_closed_with_the_task():
    held = Client({"name": "own"})
    with Task(Options("x", 1)) as task:
        assert task.adopt(held) is held
    assert held.closed

"""Generated JSON-RPC traffic for an agent, with what each message must get back, and the checks of the replies.

Every message carries what JSON-RPC 2.0 requires of its answer: no reply (a notification, a blank line), or one
reply with a given id (null for what cannot be read as a request) and one of a set of codes (`RESULT` for a
result). `Fuzzer.cases(n)` is deterministic for a seed. The agent is expected to be a demo host whose CVM `snp`
has 1 boot and 5 max vCPUs (`tests.support.agents`). Scales it may apply carry `who` = `VALID_WHO`; every scale
that must be refused carries `BAD_WHO` when its `who` is readable, so the audit log shows any that got through.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import string
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hostctl.wire import rpc
from tests.support import ROOT
from tests.support.agents import AgentProcess, answers_hello

RESULT = 0  # "a result", among the error codes a message may get
VALID_WHO = "fuzz-valid"
BAD_WHO = "fuzz-bad"
CVM = "snp"
MAX_VCPUS = 5


@dataclass(frozen=True)
class Case:
    """One line to send (without its newline) and the answer it must get."""

    category: str
    line: bytes
    reply: bool = True
    ids: tuple[Any, ...] = (None,)  # the ids the reply may carry
    codes: frozenset[int] = frozenset({rpc.INVALID_REQUEST})


@dataclass
class Tally:
    """What a run saw: cases sent and problems found, per category."""

    sent: dict[str, int] = field(default_factory=dict)
    replies: int = 0
    notifications: int = 0
    problems: list[str] = field(default_factory=list)

    def count(self, case: Case) -> None:
        self.sent[case.category] = self.sent.get(case.category, 0) + 1


def strict_json(line: bytes) -> Any:
    """Parse as strict JSON (no NaN or Infinity); ValueError otherwise."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def check_reply(case: Case, reply: Any) -> str | None:
    """Why `reply` is not the answer `case` must get, or None when it is."""
    if not isinstance(reply, dict) or reply.get("jsonrpc") != "2.0" or "id" not in reply:
        return f"{case.category}: not a JSON-RPC 2.0 reply: {str(reply)[:120]}"
    if ("result" in reply) == ("error" in reply) or set(reply) - {"jsonrpc", "id", "result", "error"}:
        return f"{case.category}: a reply needs exactly one of result and error: {str(reply)[:120]}"
    if reply["id"] not in case.ids or type(reply["id"]) not in {type(i) for i in case.ids}:
        return f"{case.category}: id {reply['id']!r}, expected one of {case.ids!r} for {case.line[:80]!r}"
    if "error" in reply:
        error = reply["error"]
        if (
            not isinstance(error, dict)
            or type(error.get("code")) is not int
            or not isinstance(error.get("message"), str)
        ):
            return f"{case.category}: malformed error object {str(error)[:120]}"
        code = error["code"]
    else:
        code = RESULT
    if code not in case.codes:
        detail = reply.get("error", {}).get("message", "") if code != RESULT else "a result"
        wanted = sorted(case.codes)
        return f"{case.category}: code {code} ({detail[:100]}), expected one of {wanted} for {case.line[:80]!r}"
    return None


def is_notification(message: Any) -> bool:
    """A notification from the agent (an `update`), not a reply."""
    return isinstance(message, dict) and "method" in message and "id" not in message


def sentinel(rid: str) -> bytes:
    """A request every agent answers: the end of a chunk."""
    return _dumps({"jsonrpc": "2.0", "id": rid, "method": "policies"})


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Fuzzer:
    """Generates cases of every category, mixed by weight."""

    def __init__(self, seed: int = 0, *, long_lines: bool = True) -> None:
        self.rng = random.Random(seed)
        self._ids = 0
        kinds: dict[str, tuple[float, Callable[[], Case]]] = {
            "binary junk": (8, self._junk),
            "malformed json": (10, self._malformed),
            "not a request": (8, self._not_request),
            "batch": (5, self._batch),
            "invalid id": (8, self._invalid_id),
            "unknown method": (8, self._unknown_method),
            "bad params": (20, self._bad_params),
            "huge or nested": (6, self._huge),
            "notification": (8, self._notification),
            "valid": (15, self._valid),
        }
        if long_lines:
            kinds["very long line"] = (0.1, self._long_line)
        self._makers = [maker for _, maker in kinds.values()]
        self._weights = [weight for weight, _ in kinds.values()]

    def cases(self, n: int) -> Iterator[Case]:
        for _ in range(n):
            yield self.rng.choices(self._makers, self._weights)[0]()

    def _id(self) -> int | str:
        self._ids += 1
        return self._ids if self._ids % 2 else f"f{self._ids}"

    def _text(self, n: int) -> str:
        return "".join(self.rng.choices(string.printable + "é€\U0001f600\x00", k=n))

    def _value(self, depth: int = 0) -> Any:
        """Any JSON value, sometimes large."""
        r = self.rng.random()
        if depth > 3 or r < 0.5:
            return self.rng.choice(
                [None, True, False, 0, -1, 2**63, 1.5, -1e308, "", "snp", self._text(self.rng.randint(0, 40))]
            )
        if r < 0.75:
            return [self._value(depth + 1) for _ in range(self.rng.randint(0, 4))]
        return {self._text(5): self._value(depth + 1) for _ in range(self.rng.randint(0, 4))}

    def _request(self, method: str, params: Any, rid: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}

    # -- categories ------------------------------------------------------------------------------

    def _junk(self) -> Case:
        line = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 400))).replace(b"\n", b"")
        if not line.strip():
            return Case("binary junk", line, reply=False)
        return Case("binary junk", line, codes=frozenset({rpc.PARSE_ERROR, rpc.INVALID_REQUEST}))

    def _malformed(self) -> Case:
        good = _dumps(self._request("hello", {}, self._id()))
        line = self.rng.choice(
            [
                good[: self.rng.randint(1, len(good) - 1)],
                good.replace(b'"', b"'"),
                good.replace(b":", b"=", 1),
                good + b"}",
                good[:-1] + b",}",
                b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{"x":'
                + self.rng.choice([b"NaN", b"Infinity"])
                + b"}}",
                b'{"jsonrpc":"2.0","id":1e400,"method":"hello"}',
                b'{"jsonrpc":"2.0","id":' + b"9" * self.rng.randint(4301, 20000) + b',"method":"hello"}',
                b'{"jsonrpc":"2.0","id":1,"method":"hello","x":"\xff\xfe"}',
            ]
        )
        return Case("malformed json", line, codes=frozenset({rpc.PARSE_ERROR}))

    def _not_request(self) -> Case:
        rid = self._id()
        value = self.rng.choice(
            [
                self._value(),
                {"jsonrpc": "2.0", "id": rid},
                {"jsonrpc": "1.0", "id": rid, "method": "hello"},
                {"id": rid, "method": "hello"},
                {"jsonrpc": "2.0", "id": rid, "method": self.rng.choice([5, None, ["hello"], {"m": 1}])},
            ]
        )
        if isinstance(value, list):
            return Case("not a request", _dumps(value))
        ids: tuple[Any, ...] = (rid,) if isinstance(value, dict) and "id" in value else (None,)
        return Case("not a request", _dumps(value), ids=ids)

    def _batch(self) -> Case:
        items = [self._request("hello", {}, self._id()) for _ in range(self.rng.randint(0, 5))]
        return Case("batch", _dumps(items))

    def _invalid_id(self) -> Case:
        rid = self.rng.choice([True, False, [1], {"id": 1}, [], {}])
        method = self.rng.choice(["hello", "snapshot", "scale", "nope"])
        params = {"cvm": CVM, "target": 3, "who": BAD_WHO} if method == "scale" else {}
        return Case("invalid id", _dumps(self._request(method, params, rid)))

    def _unknown_method(self) -> Case:
        rid = self._id()
        method = self.rng.choice(["reboot", "", "Hello", "scale ", "__init__", "rpc.discover", self._text(2000)])
        return Case(
            "unknown method", _dumps(self._request(method, {}, rid)), ids=(rid,), codes=_errors(rpc.METHOD_NOT_FOUND)
        )

    def _bad_params(self) -> Case:
        rid = self._id()
        good = {"cvm": CVM, "target": 3, "expect": 2, "who": BAD_WHO}
        key, value = self.rng.choice(
            [
                ("target", self.rng.choice([-1, 4097, 10**30, 2.0, "3", True, None, [3], {"n": 3}])),
                ("expect", self.rng.choice([-1, 5000, 1.5, "2", False, [2]])),
                ("cvm", self.rng.choice([None, 5, ["snp"], "", "x" * 1001])),
                ("who", self.rng.choice([5, ["x"], {"a": 1}, "x" * 1001])),
                ("why", self.rng.choice([5, "w" * 1001])),
                ("force", 1),
            ]
        )
        params: Any = {**good, key: value}
        if key == "target" and value is None:
            del params["target"]
        method = "scale"
        roll = self.rng.random()
        if roll < 0.15:
            params = self.rng.choice([[CVM, 3], "snp", 3, None])
        elif roll < 0.3:
            method, params = "scale", {"cvm": self.rng.choice(["nope", "SNP", "snp "]), "target": 3, "who": BAD_WHO}
        elif roll < 0.4:
            method, params = "scale", {"cvm": CVM, "target": MAX_VCPUS + 1, "who": BAD_WHO}
        elif roll < 0.55:
            method, params = "subscribe", {"interval": self.rng.choice([0, -1, 0.01, 1e9, "1", None, True, 1e308])}
            if params["interval"] is None:
                params = {"interval": None, "extra": 1}
        elif roll < 0.7:
            method, params = (
                "policy",
                {"cvm": CVM, self.rng.choice(["enabled", "name"]): self.rng.choice([1, "on", 2.5])},
            )
        elif roll < 0.8:
            method, params = "audit", {"limit": self.rng.choice([0, -5, 100_001, "10", 1.5])}
        codes = _errors(rpc.INVALID_PARAMS, rpc.REFUSED)
        return Case("bad params", _dumps(self._request(method, params, rid)), ids=(rid,), codes=codes)

    def _huge(self) -> Case:
        rid = self._id()
        depth = self.rng.choice([50, 500, 5000, 100_000])
        kind = self.rng.random()
        if kind < 0.4:  # nesting: beyond the parser's recursion limit it is no request at all
            nested = b"[" * depth + b"]" * depth
            line = b'{"jsonrpc":"2.0","id":' + _dumps(rid) + b',"method":"scale","params":{"cvm":' + nested + b"}}"
            return Case("huge or nested", line, ids=(rid, None), codes=_errors(rpc.INVALID_PARAMS, rpc.PARSE_ERROR))
        if kind < 0.7:
            params = {"cvm": CVM, "target": 3, "who": BAD_WHO, "why": "w" * self.rng.choice([1001, 100_000, 900_000])}
        else:
            params = {"client": "c" * self.rng.choice([1001, 500_000]), "x": list(range(self.rng.choice([10, 50_000])))}
            return Case(
                "huge or nested",
                _dumps(self._request("hello", params, rid)),
                ids=(rid,),
                codes=_errors(rpc.INVALID_PARAMS),
            )
        return Case(
            "huge or nested", _dumps(self._request("scale", params, rid)), ids=(rid,), codes=_errors(rpc.INVALID_PARAMS)
        )

    def _long_line(self) -> Case:
        return Case("very long line", b'{"jsonrpc":"2.0","id":1,"x":"' + b"y" * (rpc.MAX_LINE + 100) + b'"}')

    def _notification(self) -> Case:
        method, params = self.rng.choice(
            [
                ("hello", {"client": "fuzz-note"}),
                ("snapshot", {}),
                ("nope", {}),
                ("scale", {"cvm": CVM, "target": "3", "who": BAD_WHO}),
                ("scale", {"cvm": "nope", "target": 3, "who": BAD_WHO}),
                ("policies", [1]),
            ]
        )
        return Case("notification", _dumps({"jsonrpc": "2.0", "method": method, "params": params}), reply=False)

    def _valid(self) -> Case:
        rid = self._id()
        method, params = self.rng.choice(
            [
                ("hello", {"client": "fuzz-hello"}),
                ("snapshot", {}),
                ("policies", {}),
                ("audit", {"limit": self.rng.choice([1, 10, 1000])}),
                ("policy", {"cvm": CVM}),
                ("subscribe", {"interval": self.rng.choice([0.05, 0.5, 5.0])}),
                ("scale", {"cvm": CVM, "target": self.rng.randint(1, MAX_VCPUS), "who": VALID_WHO, "why": "fuzz"}),
            ]
        )
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params or self.rng.random() < 0.5:
            request["params"] = params
        return Case("valid", _dumps(request), ids=(rid,), codes=_errors(RESULT))


def _errors(*codes: int) -> frozenset[int]:
    return frozenset(codes)


def applied_scales(audit_lines: list[str]) -> tuple[int, list[str]]:
    """The scales the audit log shows applied by a valid request, and those applied by anything else."""
    valid, wrong = 0, []
    for line in audit_lines:
        event = json.loads(line)
        if event.get("action") != "scale" or not event.get("ok") or event.get("before") == event.get("after"):
            continue
        if str(event.get("who", "")).startswith(VALID_WHO):
            valid += 1
        elif not str(event.get("who", "")).startswith("policy:"):
            wrong.append(line.strip()[:200])
    return valid, wrong


async def run(socket: Path, cases: Iterable[Case], *, connections: int = 4, chunk: int = 64) -> Tally:
    """Send `cases` over `connections` parallel connections, pipelined `chunk` at a time, each chunk ended by a
    sentinel request, and check every reply; a connection the agent drops or leaves unanswered is a problem."""
    tally = Tally()
    source = iter(cases)

    async def connection(n: int) -> None:
        reader, writer = await asyncio.open_unix_connection(str(socket), limit=4 * rpc.MAX_LINE)
        try:
            for k in itertools.count():
                batch = list(itertools.islice(source, chunk))
                if not batch:
                    return
                for case in batch:
                    tally.count(case)
                end = f"end-{n}-{k}"
                answers = asyncio.ensure_future(_read_until(reader, end, tally))
                writer.write(b"".join(case.line + b"\n" for case in batch) + sentinel(end) + b"\n")
                try:
                    async with asyncio.timeout(60):
                        await writer.drain()
                        _match(batch, await answers, tally)
                except (TimeoutError, ConnectionError, ValueError) as e:
                    answers.cancel()
                    tally.problems.append(f"connection {n} lost at chunk {k}: {type(e).__name__}: {e}"[:300])
                    return
        finally:
            writer.close()

    await asyncio.gather(*(connection(n) for n in range(connections)))
    return tally


async def cut_connections(socket: Path, count: int, seed: int = 0) -> None:
    """Open `count` connections that each send part of a request and close mid-line."""
    rng = random.Random(seed)
    line = _dumps({"jsonrpc": "2.0", "id": 1, "method": "scale", "params": {"cvm": CVM, "target": 3, "who": BAD_WHO}})
    for _ in range(count):
        _reader, writer = await asyncio.open_unix_connection(str(socket))
        writer.write(line[: rng.randint(1, len(line) - 1)])
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_until(reader: asyncio.StreamReader, end: str, tally: Tally) -> list[Any]:
    replies: list[Any] = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed by the agent")
        try:
            message = strict_json(line)
        except ValueError as e:
            tally.problems.append(f"a reply that is not JSON ({e}): {line[:120]!r}")
            continue
        if is_notification(message):
            tally.notifications += 1
            continue
        if isinstance(message, dict) and message.get("id") == end:
            return replies
        tally.replies += 1
        replies.append(message)


def _match(batch: list[Case], replies: list[Any], tally: Tally) -> None:
    expected = [case for case in batch if case.reply]
    if len(replies) != len(expected):
        sent = ", ".join(f"{c.category}:{c.line[:40]!r}" for c in batch if not c.reply)
        tally.problems.append(f"{len(replies)} replies to {len(expected)} requests (no reply expected for {sent})")
        return
    for case, reply in zip(expected, replies, strict=True):
        if (why := check_reply(case, reply)) is not None:
            tally.problems.append(why)


class LoggedAgent(AgentProcess):
    """A demo host agent process whose stderr goes to a file, so a traceback in it is seen."""

    def __init__(self, runtime: Path, name: str = "fuzz") -> None:
        super().__init__(runtime, name, wake_ms=1.0)
        self.stderr = runtime / f"{name}.stderr"
        self._log: IO[bytes] | None = None

    async def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self._log = self.stderr.open("wb")
        self.proc = await asyncio.to_thread(
            subprocess.Popen, self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stderr=self._log
        )
        if not await answers_hello(self.socket, tries=300):
            raise RuntimeError(f"agent {self.name} did not start: {self.stderr.read_text()[-500:]}")

    def stop(self) -> None:
        super().stop()
        if self._log is not None:
            self._log.close()

    def tracebacks(self) -> int:
        return self.stderr.read_text(errors="replace").count("Traceback")

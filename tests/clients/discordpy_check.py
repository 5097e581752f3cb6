"""discord.py against the standalone fake gateway (examples/fake_gateway.rs), unmodified but for the
URLs it is pointed at.

Usage: python discordpy_check.py FAKE_GATEWAY_BINARY EXPECTED_COMPRESS

EXPECTED_COMPRESS is the `compress` value discord.py must ask for: `zstd-stream` when the
zstandard package is importable (discord.py's speed extras), `zlib-stream` otherwise. Every
scenario prints one PASS or FAIL line; the last line is "N passed, N failed", and the exit code is
non-zero when anything failed or did not run.

What is pointed at the fake:
- `discord.http.Route.BASE`: discord.py's REST base (`GET /users/@me`, `GET
  /oauth2/applications/@me`, `GET /gateway/bot`; the gateway URL comes from the last one).
- `discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`: after an op 9 `false`, discord.py drops the
  URL `GET /gateway/bot` gave it and re-identifies at this hard-coded `wss://gateway.discord.gg/`
  (discord.py's own limit, docs/fake-gateway.md); without it the re-identify would leave the fake.
"""

import asyncio
import collections
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import discord
import discord.gateway
import discord.http
import yarl

TOKEN = "fake-token"
WAIT = 40.0  # seconds for any one expected thing; discord.py waits 5 s before a non-initial Identify
FLOOD = 200
REPLAY = 50


class Fake:
    """The fake gateway as a subprocess, and its control API."""

    def __init__(self, binary, *args):
        self.proc = subprocess.Popen(
            [binary, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fake gateway did not start: " + self.proc.stderr.read())
        self.urls = json.loads(line)
        self.log = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.urls["control"] + path, data=data, method=method)
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    async def get(self, path):
        return (await asyncio.to_thread(self._call, "GET", path))[1]

    async def post(self, path, body=None):
        return await asyncio.to_thread(self._call, "POST", path, body)

    async def dispatch(self, shard, d, count=1):
        """A MESSAGE_CREATE `count` times; strict: the fake refuses an incomplete Message."""
        status, answer = await self.post(
            f"/shards/{shard}/dispatch?strict=true",
            {"t": "MESSAGE_CREATE", "d": d, "count": count},
        )
        assert status == 200, f"dispatch answered {status}: {answer}"
        return answer

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return "".join(self.log)


def message(n, content):
    """A whole Message object, every field Discord always sends (as testkit::message makes)."""
    return {
        "id": str(1_200_000_000_000_000_000 + n),
        "channel_id": "1100000000000000002",
        "author": {"id": "1100000000000000003", "username": "fake-user", "discriminator": "0",
                   "global_name": "Fake User", "avatar": None, "public_flags": 0},
        "content": content,
        "timestamp": "2024-01-25T09:31:34.921+00:00",
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "type": 0,
        "flags": 0,
        "components": [],
    }


class Bot(discord.AutoShardedClient):
    """Counts what discord.py delivers to a bot's event handlers."""

    def __init__(self):
        super().__init__(intents=discord.Intents.default())
        self.readies = collections.Counter()
        self.resumes = collections.Counter()
        self.contents = collections.Counter()

    async def on_shard_ready(self, shard_id):
        self.readies[shard_id] += 1

    async def on_shard_resumed(self, shard_id):
        self.resumes[shard_id] += 1

    async def on_message(self, m):
        self.contents[m.content] += 1


async def until(what, condition, client=None):
    """Waits for `condition`; fails at once if the client stopped with an error meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        if client is not None and client.done() and client.exception() is not None:
            e = client.exception()
            raise AssertionError(f"discord.py stopped waiting for {what}: {type(e).__name__}: {e}")
        if loop.time() > deadline:
            raise AssertionError(f"not within {WAIT:.0f} s: {what}")
        await asyncio.sleep(0.02)


def ops_of(frames, op, shard):
    return [f for f in frames if f["op"] == op and f["shard"] == shard]


async def run(binary, compress):
    discord.utils.setup_logging(level=40)  # errors on stderr (not the voice-support warnings)
    fake = Fake(binary, "--shards", "2", "--max-concurrency", "2", "--heartbeat-interval-ms", "5000")
    discord.http.Route.BASE = fake.urls["api_base"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.urls["gateway"] + "/")
    bot = Bot()
    task = asyncio.create_task(bot.start(TOKEN))
    results = []
    sessions = {}

    async def two_shards_ready():
        await until("READY on shards 0 and 1", lambda: bot.readies[0] == 1 and bot.readies[1] == 1, task)
        shards = await fake.get("/shards")
        assert shards["ready"] == [0, 1], shards
        sessions.update({s: shards["sessions"][str(s)]["id"] for s in (0, 1)})
        frames = await fake.get("/frames")
        for s in (0, 1):
            assert len(ops_of(frames, 2, s)) == 1, f"shard {s} identified more than once"
        rest = await fake.get("/rest")
        asked = {(c["method"], c["path"]): c["status"] for c in rest}
        for route in ("/api/v10/users/@me", "/api/v10/oauth2/applications/@me"):
            assert asked.get(("GET", route)) == 200, f"GET {route}: {rest}"
        unknown = [c for c in rest if c["status"] == 404]
        assert not unknown, f"discord.py asked for routes the fake does not serve: {unknown}"

    async def flood_counted_once():
        for s in (0, 1):
            await fake.dispatch(s, message(s, f"flood-{s}"), FLOOD)
            await fake.dispatch(s, message(10 + s, f"after-flood-{s}"))
        await until("both markers after the floods",
                    lambda: bot.contents["after-flood-0"] == 1 and bot.contents["after-flood-1"] == 1)
        for s in (0, 1):
            got = bot.contents[f"flood-{s}"]
            assert got == FLOOD, f"shard {s}: {got} flood messages delivered, {FLOOD} sent"

    async def op7_resume_with_replay():
        # op 7 with dispatches: the fake sends nothing more on the old connection and keeps
        # these in the session in the same step, so they reach the client only in the replay.
        status, seqs = await fake.post(
            "/shards/0/reconnect?strict=true",
            {"t": "MESSAGE_CREATE", "d": message(20, "replayed"), "count": REPLAY},
        )
        assert status == 200, seqs
        await fake.dispatch(0, message(21, "after-resume"))
        await until("the marker after the resume", lambda: bot.contents["after-resume"] == 1)
        await until("on_shard_resumed", lambda: bot.resumes[0] == 1)
        assert bot.contents["replayed"] == REPLAY, f"{bot.contents['replayed']} of {REPLAY} delivered"
        resumes = ops_of(await fake.get("/frames"), 6, 0)
        assert len(resumes) == 1, f"{len(resumes)} Resume frames"
        resume = resumes[0]["frame"]["d"]
        assert resume["session_id"] == sessions[0], "resumed another session"
        assert resume["seq"] == seqs["first_seq"] - 1, (
            f"resumed from seq {resume['seq']}, not the last before the op 7 ({seqs['first_seq'] - 1})")
        conns = [c for c in await fake.get("/connections") if c["shard"] == 0]
        assert conns[-1]["path"] == "/resume" and conns[-1]["outcome"]["resumed"] == sessions[0], conns[-1]

    async def op9_false_reidentify():
        status, answer = await fake.post("/shards/1/invalid-session?resumable=false")
        assert status == 200, answer
        await until("a second READY on shard 1", lambda: bot.readies[1] == 2)
        identifies = ops_of(await fake.get("/frames"), 2, 1)
        assert len(identifies) == 2, f"{len(identifies)} Identify frames for shard 1"
        shards = await fake.get("/shards")
        assert shards["sessions"]["1"]["id"] != sessions[1], "still the old session"
        await fake.dispatch(1, message(30, "new-session"))
        await until("a message on the new session", lambda: bot.contents["new-session"] == 1)

    async def close_4004_stops():
        status, answer = await fake.post("/shards/0/close?code=4004")
        assert status == 200, answer
        try:
            await asyncio.wait_for(asyncio.shield(task), WAIT)
        except discord.ConnectionClosed as e:
            assert e.code == 4004, f"stopped with {e.code}"
        except asyncio.TimeoutError:
            raise AssertionError("discord.py kept running after close 4004") from None
        else:
            raise AssertionError("Client.start returned without an error after close 4004")
        conns = await fake.get("/connections")
        closed = [c for c in conns if c["server_close_code"] == 4004]
        assert len(closed) == 1, conns
        later = [c for c in conns if c["opened_ms"] >= closed[0]["closed_ms"]]
        assert not later, f"connections opened after close 4004: {later}"
        open_ = [c for c in conns if c["closed_ms"] is None]
        assert not open_, f"connections still open after the client stopped: {open_}"

    async def compression():
        conns = await fake.get("/connections")
        assert len(conns) >= 4, conns
        wrong = [(c["id"], c["compress"]) for c in conns if c["compress"] != compress]
        assert not wrong, f"connections not on {compress}: {wrong}"

    scenarios = [
        ("two shards READY", two_shards_ready),
        ("flood counted exactly once", flood_counted_once),
        ("op 7 resume with replay", op7_resume_with_replay),
        ("op 9 false re-identify", op9_false_reidentify),
        ("close 4004 stops the client", close_4004_stops),
        (f"{compress} on every connection", compression),
    ]
    failed_before = None
    for name, scenario in scenarios:
        label = f"discord.py {discord.__version__} [{compress}] {name}"
        if failed_before is not None:
            results.append((label, False, f"not run: {failed_before!r} failed first"))
            continue
        try:
            await scenario()
            results.append((label, True, ""))
        except Exception as e:  # noqa: BLE001 - every failure is reported, whatever it is
            results.append((label, False, f"{type(e).__name__}: {e}"))
            failed_before = name
        print(("PASS " if results[-1][1] else "FAIL ") + label
              + (f": {results[-1][2]}" if results[-1][2] else ""), flush=True)
    for label, ok, why in results:
        if why.startswith("not run"):
            print(f"FAIL {label}: {why}", flush=True)
    if not task.done():
        await bot.close()
        task.cancel()
    log = fake.stop()
    failed = sum(1 for r in results if not r[1])
    if failed:
        print("--- the fake gateway's log ---\n" + log[-20000:], file=sys.stderr)
    print(f"{len(results) - failed} passed, {failed} failed")
    return failed


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    binary, compress = sys.argv[1], sys.argv[2]
    active = discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE
    if active != compress:
        print(f"FAIL discord.py picked {active}, the check expected {compress}")
        print("0 passed, 1 failed")
        sys.exit(1)
    failed = asyncio.run(run(binary, compress))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

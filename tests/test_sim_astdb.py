"""The simulator's AstDB: ``DB()``/``DB_EXISTS()``/``DB_DELETE()`` in the dialplan and the
AMI actions ``DBGet``/``DBPut``/``DBDel``, with Asterisk 22's answers (``main/db.c``,
``funcs/func_db.c``; the same shapes are checked on a real Asterisk in
``test_real_asterisk_astdb.py``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
from rigs import action, wait_for

from ivr.ami.client import AMIClient
from ivr.ami.errors import ActionError
from ivr.sim.ami_server import AMIServer, encode_result
from ivr.sim.config import default_config
from ivr.sim.dialplan import AstDB
from ivr.sim.engine import OriginateRequest, Simulator

SECRET = "astdb-secret"
EPOCH = 1_800_000_000.0


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    cfg = default_config()
    cfg.dialplan = {
        "db": {
            "s": [
                "Set(DB(decroche-cb/cb1)=2:ANSWER)",
                "Set(GOT=${DB(decroche-cb/cb1)})",
                "Set(NONE=${DB(decroche-cb/nosuch)})",
                "Set(EXISTS=${DB_EXISTS(decroche-cb/cb1)}${DB_EXISTS(decroche-cb/nosuch)})",
                "Set(DB(decroche-cb/cb2)=1:BUSY)",
                "Set(TAKEN=${DB_DELETE(decroche-cb/cb2)})",
                "Set(DB(decroche-cb/cb3)=1:NOANSWER)",
                "Set(DB_DELETE(decroche-cb/cb3)=)",
                "Set(DB(other/a/b)=deep)",
                "Hangup()",
            ]
        }
    }
    s = Simulator(cfg, seed=1, speed=math.inf, start_epoch=EPOCH)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def test_astdb_functions_read_and_write() -> None:
    db = AstDB()
    assert db.write_function("DB(f/k)", "v") == (True, None)
    assert db.read_function("DB(f/k)") == ("v", "v")
    assert db.read_function("DB(f/nosuch)") == ("", None)  # DB_RESULT untouched
    assert db.read_function("DB_EXISTS(f/k)") == ("1", "v")
    assert db.read_function("DB_EXISTS(f/nosuch)") == ("0", None)
    assert db.read_function("DB(nokey)") == ("", None)
    assert db.read_function("DBX(f/k)") is None and db.read_function("CHANNEL(name)") is None
    assert db.read_function("DB_DELETE(f/k)") == ("v", "v") and db.get("f", "k") is None
    assert db.read_function("DB_DELETE(f/k)") == ("", "")  # DB_RESULT set, empty
    assert db.write_function("CHANNEL(language)", "fr") == (False, None)
    db.put("f", "k2", "w")
    assert db.write_function("DB_DELETE(f/k2)", "") == (True, "w") and db.get("f", "k2") is None


async def test_dialplan_reads_writes_and_deletes(sim: Simulator) -> None:
    vars_seen: dict[str, str] = {}

    def listener(name: str, headers: list[tuple[str, str]]) -> None:
        h = dict(headers)
        if name == "VarSet" and h.get("Variable") in ("GOT", "NONE", "EXISTS", "TAKEN", "DB_RESULT"):
            vars_seen.setdefault(h["Variable"], h.get("Value", ""))

    sim.add_listener(listener)
    await sim.originate_sync(OriginateRequest("Local/s@db", application="Wait", data="1"))
    await wait_for(lambda: not sim.channels, limit_s=5.0, what="the call over")
    assert vars_seen["GOT"] == "2:ANSWER" and vars_seen["DB_RESULT"] == "2:ANSWER"
    assert vars_seen["NONE"] == "" and vars_seen["EXISTS"] == "10" and vars_seen["TAKEN"] == "1:BUSY"
    assert sim.astdb.entries == {("decroche-cb", "cb1"): "2:ANSWER", ("other", "a/b"): "deep"}


async def test_db_actions_answer_as_asterisk_22(sim: Simulator) -> None:
    missing = await sim.handle_action(action("DBGet", ("Family", "decroche-cb"), ("Key", "nosuch")))
    assert encode_result(missing, "t-1") == (
        b"Response: Error\r\nActionID: t-1\r\nMessage: Database entry not found\r\n\r\n"
    )
    put = await sim.handle_action(
        action("DBPut", ("Family", "decroche-cb"), ("Key", "cb9"), ("Val", "4:BUSY"))
    )
    assert encode_result(put, "t-1") == (
        b"Response: Success\r\nActionID: t-1\r\nMessage: Updated database successfully\r\n\r\n"
    )
    got = await sim.handle_action(action("DBGet", ("Family", "decroche-cb"), ("Key", "cb9")))
    assert encode_result(got, "t-1") == (
        b"Response: Success\r\nActionID: t-1\r\nEventList: start\r\nMessage: Result will follow\r\n\r\n"
        b"Event: DBGetResponse\r\nFamily: decroche-cb\r\nKey: cb9\r\nVal: 4:BUSY\r\nActionID: t-1\r\n\r\n"
        b"Event: DBGetComplete\r\nActionID: t-1\r\nEventList: Complete\r\nListItems: 1\r\n\r\n"
    )
    deleted = await sim.handle_action(action("DBDel", ("Family", "decroche-cb"), ("Key", "cb9")))
    assert encode_result(deleted, None) == b"Response: Success\r\nMessage: Key deleted successfully\r\n\r\n"
    again = await sim.handle_action(action("DBDel", ("Family", "decroche-cb"), ("Key", "cb9")))
    assert encode_result(again, None) == (
        b"Response: Error\r\nMessage: Database entry could not be deleted\r\n\r\n"
    )
    # argument checks: DBGet's and DBDel's texts end with a dot, DBPut's do not
    for name, pairs, message in (
        ("DBGet", (), "No family specified."),
        ("DBGet", (("Family", "f"),), "No key specified."),
        ("DBDel", (), "No family specified."),
        ("DBDel", (("Family", "f"),), "No key specified."),
        ("DBPut", (), "No family specified"),
        ("DBPut", (("Family", "f"),), "No key specified"),
    ):
        result = await sim.handle_action(action(name, *pairs))
        assert (result.status, result.headers) == ("Error", [("Message", message)]), name


async def test_dbget_over_ami_as_the_dispatcher_reads_it(sim: Simulator) -> None:
    sim.astdb.put("decroche-cb", "cb5", "2:NOANSWER")
    async with AMIServer(sim, secret=SECRET) as server:
        client = AMIClient("127.0.0.1", server.port, "ivr", SECRET, action_timeout=2.0)
        await client.start()
        try:
            reply = await client.list_action("DBGet", {"Family": "decroche-cb", "Key": "cb5"})
            [item] = reply.items
            assert (item.name, item.get("Val")) == ("DBGetResponse", "2:NOANSWER")
            assert [k for k, _ in item.headers] == ["Event", "Family", "Key", "Val", "ActionID"]
            assert reply.complete is not None and reply.complete.name == "DBGetComplete"
            assert reply.response.message == "Result will follow" and not reply.count_mismatch
            with pytest.raises(ActionError) as refused:
                await client.list_action("DBGet", {"Family": "decroche-cb", "Key": "cb6"})
            assert refused.value.message == "Database entry not found"
        finally:
            await client.close()

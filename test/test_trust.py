"""The trust core: key files, signatures and the receiver's checks (tampering, unknown signers, replays, clock
skew, identity), and `edge-lam keys`."""

from __future__ import annotations

import stat

import pytest

from edge_lam.cli import main as cli
from edge_lam.trust.checks import Signed, Stamper, Verdict, Verifier
from edge_lam.trust.keys import KeyFileError, list_keys, load_signing_key, load_trust_store, make_keys

S = 10**9
NOW = 1_800_000_000 * S


@pytest.fixture
def fleet(tmp_path):
    """Keys of robot and edge in the store; intruder's key exists but is not in it."""
    make_keys(tmp_path / "fleet", ["robot", "edge"])
    make_keys(tmp_path / "other", ["intruder"])
    return tmp_path


def signed(key_path, data: bytes, stamp_ns: int) -> Signed:
    key = load_signing_key(key_path)
    return Signed(key.name, stamp_ns, key.sign(data))


def test_keys_are_written_private_0600_and_never_overwritten_unless_forced(tmp_path):
    written = make_keys(tmp_path, ["robot", "edge"])
    assert sorted(p.name for p in written) == ["edge.key", "edge.pub", "robot.key", "robot.pub"]
    assert stat.S_IMODE((tmp_path / "robot.key").stat().st_mode) == 0o600
    before = (tmp_path / "robot.pub").read_bytes()
    with pytest.raises(KeyFileError, match="not overwritten"):
        make_keys(tmp_path, ["robot"])
    assert (tmp_path / "robot.pub").read_bytes() == before
    make_keys(tmp_path, ["robot"], force=True)
    assert (tmp_path / "robot.pub").read_bytes() != before
    assert list_keys(tmp_path) == [("edge", True, True), ("robot", True, True)]
    with pytest.raises(KeyFileError, match="must be letters"):
        make_keys(tmp_path, ["../evil"])


def test_bad_key_files_and_an_empty_store_are_clear_errors(tmp_path):
    with pytest.raises(KeyFileError, match=r"no \*\.pub key"):
        load_trust_store(tmp_path)
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(KeyFileError, match=r"junk\.pub"):
        load_trust_store(tmp_path)
    with pytest.raises(KeyFileError, match="cannot read the signing key"):
        load_signing_key(tmp_path / "missing.key")


def test_a_genuine_signature_is_accepted_and_every_attack_is_refused_and_counted(fleet):
    verifier = Verifier(load_trust_store(fleet / "fleet"), max_clock_skew_s=5.0)
    data = b"plan v1"
    good = signed(fleet / "fleet" / "edge.key", data, NOW)
    assert verifier.check("plan", good, data, NOW) is Verdict.ACCEPTED
    assert verifier.check("plan", good, data, NOW + S) is Verdict.STALE  # the same message again: a replay
    assert verifier.check("plan", Signed("", 0, b""), data, NOW) is Verdict.UNSIGNED
    assert verifier.check("plan", signed(fleet / "other" / "intruder.key", data, NOW + 1), data,
                          NOW) is Verdict.UNKNOWN_SIGNER
    tampered = signed(fleet / "fleet" / "edge.key", data, NOW + 2)
    assert verifier.check("plan", tampered, b"plan v2", NOW) is Verdict.BAD_SIGNATURE
    # a signature by the intruder's key under a trusted name
    forged = Signed("edge", NOW + 3, load_signing_key(fleet / "other" / "intruder.key").sign(data))
    assert verifier.check("plan", forged, data, NOW) is Verdict.BAD_SIGNATURE
    assert verifier.refused("plan") == {"stale or replayed": 1, "unsigned": 1, "unknown signer": 1,
                                        "bad signature": 2}
    assert verifier.counts["plan", Verdict.ACCEPTED] == 1


def test_stamps_outside_the_clock_skew_are_refused_and_latched_state_may_be_old(fleet):
    verifier = Verifier(load_trust_store(fleet / "fleet"), max_clock_skew_s=5.0)
    key = fleet / "fleet" / "robot.key"
    ahead = signed(key, b"x", NOW + 86400 * S)  # a day ahead: never accepted, latched or not
    assert verifier.check("plan", ahead, b"x", NOW, max_age=False) is Verdict.STALE
    old = signed(key, b"x", NOW - 60 * S)
    assert verifier.check("adverts", old, b"x", NOW) is Verdict.STALE
    assert verifier.check("plan", old, b"x", NOW) is Verdict.STALE
    assert verifier.check("plan", old, b"x", NOW, max_age=False) is Verdict.ACCEPTED  # a late joiner's plan
    within = signed(key, b"x", NOW + 4 * S)
    assert verifier.check("adverts", within, b"x", NOW) is Verdict.ACCEPTED


def test_newer_is_per_signer_and_channel(fleet):
    verifier = Verifier(load_trust_store(fleet / "fleet"), max_clock_skew_s=5.0)
    robot, edge = fleet / "fleet" / "robot.key", fleet / "fleet" / "edge.key"
    assert verifier.check("a", signed(robot, b"x", NOW), b"x", NOW) is Verdict.ACCEPTED
    assert verifier.check("b", signed(robot, b"x", NOW), b"x", NOW) is Verdict.ACCEPTED  # another channel
    assert verifier.check("a", signed(edge, b"x", NOW - 1), b"x", NOW) is Verdict.ACCEPTED  # another signer
    assert verifier.check("a", signed(robot, b"x", NOW - 1), b"x", NOW) is Verdict.STALE  # older than robot's last


def test_a_channel_that_binds_an_identity_refuses_other_trusted_signers(fleet):
    verifier = Verifier(load_trust_store(fleet / "fleet"), max_clock_skew_s=5.0)
    advert = signed(fleet / "fleet" / "robot.key", b"advert of edge", NOW)
    assert verifier.check("adverts", advert, b"advert of edge", NOW, identity="edge") is Verdict.WRONG_IDENTITY
    assert verifier.check("adverts", advert, b"advert of edge", NOW, identity="robot") is Verdict.ACCEPTED


def test_stamps_of_one_signer_strictly_increase_within_a_clock_tick(fleet):
    stamper = Stamper(load_signing_key(fleet / "fleet" / "robot.key"))
    assert [stamper.stamp(NOW) for _ in range(3)] == [NOW, NOW + 1, NOW + 2]
    assert stamper.stamp(NOW - S) == NOW + 3  # the clock stepped back
    assert stamper.stamp(NOW + S) == NOW + S


def test_the_keys_command_makes_lists_and_refuses_to_overwrite(tmp_path, capsys):
    assert cli(["keys", "make", str(tmp_path), "robot", "edge"]) == 0
    assert cli(["keys", "make", str(tmp_path), "robot"]) == 2
    assert "not overwritten" in capsys.readouterr().err
    assert cli(["keys", "list", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["edge\tprivate+public", "robot\tprivate+public"]

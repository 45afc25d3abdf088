"""Item 1 (store level): SIGKILL a saving process at random moments; a crash leaves only
leftovers, never corruption, and ``tinkerstore sweep`` then ``tinkerstore verify`` come out clean.

``tests/service/test_crash.py`` checks acknowledged checkpoints survive 50 kills; this test adds
the whole-store view after each kill, through the commands an operator would run.
Kills: ``6 * TINKERSTORE_RELIABILITY_SCALE``.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

from click.testing import CliRunner

from tests.reliability.conftest import add_figure, scale
from tests.service.test_crash import start_saver
from tinkerstore.cli import main
from tinkerstore.service import open_store
from tinkerstore.service.verify import verify_store


def test_after_any_kill_verify_sees_only_leftovers_and_sweep_repairs_them(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    rng = random.Random(99)
    kills = int(6 * scale())
    acknowledged = 0
    leftovers_seen = 0
    for kill in range(kills):
        proc = start_saver(data_dir, seed=1000 + kill)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acknowledged += out.count("COMMITTED ")

        store = open_store(data_dir)
        before = verify_store(store)
        store.catalog.close()
        corrupt = [p for p in before.problems if p.severity == "corrupt"]
        assert corrupt == [], f"kill {kill}: {corrupt}"
        leftovers_seen += len(before.problems)

        runner = CliRunner()
        swept = runner.invoke(main, ["sweep", "--json", "--data-dir", str(data_dir)])
        assert swept.exit_code == 0, swept.output
        assert json.loads(swept.stdout)["sole_writer"] is True
        verified = runner.invoke(main, ["verify", "--json", "--data-dir", str(data_dir)])
        assert verified.exit_code == 0, verified.stdout
        assert json.loads(verified.stdout)["checkpoints"] >= 0
    assert acknowledged >= kills // 3, "the saver barely saved anything: test too weak"
    add_figure("kills survived (SIGKILL during saves, verify clean after sweep)", kills)
    add_figure("crash leftovers found by verify and repaired by sweep", leftovers_seen)

"""Opacus's accountants run without torch (``privacy_accounting.opacus_accountants``) give exactly the
figures of Opacus imported normally, and an Opacus the loader does not know falls back to that import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

# (sigma, q, steps) histories: one phase, several phases, q = 1, a large sigma, few and many steps
HISTORIES = [
    [(1.0, 256 / 50000, 1953)],
    [(0.7, 0.01, 300), (1.3, 0.02, 50)],
    [(2.0, 1.0, 5)],
    [(10.0, 0.5, 1)],
    [(0.9, 0.004, 20000)],
]
DELTAS = [1e-5, 1e-8]
TORCH_FREE = """
import json, sys
from privacy_accounting import accountants, dp_sgd_event
from privacy_accounting.opacus_accountants import accountant_classes
rdp, prv = accountant_classes()
figures = []
for history in json.loads(sys.argv[1]):
    for delta in json.loads(sys.argv[2]):
        for cls in (rdp, prv):
            accountant = cls()
            accountant.history = [tuple(h) for h in history]
            figures.append(float(accountant.get_epsilon(delta)).hex())
event = dp_sgd_event(*json.loads(sys.argv[1])[0][0])
figures += [accountants.rdp_epsilon(event, 1e-5).hex(), accountants.prv_epsilon(event, 1e-5).hex()]
analysis = sys.modules["privacy_accounting._opacus_accountants.analysis.rdp"]
memo = analysis._compute_rdp.cache_info()
import numpy as np
figures.append(float(analysis._compute_rdp(np.array(0.01), 1.0, 2.5)).hex())  # unhashable: computed, not kept
print(json.dumps({"figures": figures, "classes": [rdp.__module__, prv.__module__],
                  "loaded": sorted(m for m in ("torch", "opacus") if m in sys.modules),
                  "rdp_memo": [memo.hits, memo.misses]}))
"""
FALLBACK = """
import importlib.metadata, json, sys
from privacy_accounting import opacus_accountants
from privacy_accounting.opacus_accountants import ALIAS, accountant_classes
if sys.argv[1] == "version":
    version = importlib.metadata.version
    importlib.metadata.version = lambda name: "9.9" if name == "opacus" else version(name)
else:  # Opacus's files where the loader looks, but one of them fails to load
    from pathlib import Path
    opacus_accountants._accountants_folder = lambda: Path(sys.argv[1])
rdp, prv = accountant_classes()
print(json.dumps({"classes": [rdp.__module__, prv.__module__],
                  "alias_left": [m for m in sys.modules if m.startswith(ALIAS)]}))
"""


def _run(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_torch_free_accountants_give_opacus_figures_bit_for_bit() -> None:
    import numpy as np
    from opacus.accountants import PRVAccountant, RDPAccountant
    from opacus.accountants.analysis.rdp import _compute_rdp

    from privacy_accounting import accountants, dp_sgd_event

    result = _run(TORCH_FREE, json.dumps(HISTORIES), json.dumps(DELTAS))
    assert result["loaded"] == []  # neither torch nor the opacus package was imported
    assert all(m.startswith("privacy_accounting._opacus_accountants.") for m in result["classes"])
    expected = []
    for history in HISTORIES:
        for delta in DELTAS:
            for cls in (RDPAccountant, PRVAccountant):
                accountant = cls()
                accountant.history = list(history)
                expected.append(float(accountant.get_epsilon(delta)).hex())
    event = dp_sgd_event(*HISTORIES[0][0])  # as the library calls them, with its PRV error settings
    expected += [accountants.rdp_epsilon(event, 1e-5).hex(), accountants.prv_epsilon(event, 1e-5).hex()]
    expected.append(float(_compute_rdp(np.array(0.01), 1.0, 2.5)).hex())
    assert result["figures"] == expected
    # one step's RDP at each of Opacus's 151 orders, computed once per (q, sigma) of the histories (and the
    # PRV accountant's domain, which asks for RDP too), then reused for the second delta and the domain
    hits, misses = result["rdp_memo"]
    assert misses == 151 * 6 and hits > 2 * misses


@pytest.mark.parametrize("case", ["version", "file"])
def test_an_unchecked_opacus_falls_back_to_the_ordinary_import(tmp_path, case: str) -> None:
    """Another Opacus version, or a file that fails to load (the private modules loaded so far are removed)."""
    from privacy_accounting.opacus_accountants import _accountants_folder

    folder = tmp_path / "accountants"
    shutil.copytree(_accountants_folder(), folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "prv.py").write_text("raise ImportError('moved in this Opacus')\n")  # after rdp.py loaded
    result = _run(FALLBACK, "version" if case == "version" else str(folder))
    assert result == {"classes": ["opacus.accountants.rdp", "opacus.accountants.prv"], "alias_left": []}


def test_once_opacus_is_loaded_its_own_classes_are_used() -> None:
    pytest.importorskip("torch")
    from opacus.accountants import PRVAccountant, RDPAccountant

    from privacy_accounting.opacus_accountants import accountant_classes

    assert accountant_classes() == (RDPAccountant, PRVAccountant)


def test_with_torch_loaded_but_not_opacus_the_private_copy_is_used() -> None:
    """A training command's driver: torch for the network, no Opacus; the same figures from the copy."""
    pytest.importorskip("torch")
    result = _run("import torch\n" + TORCH_FREE, json.dumps(HISTORIES[:1]), json.dumps(DELTAS[:1]))
    assert result["loaded"] == ["torch"]  # Opacus's package still not imported
    assert all(m.startswith("privacy_accounting._opacus_accountants.") for m in result["classes"])
    plain = _run(TORCH_FREE, json.dumps(HISTORIES[:1]), json.dumps(DELTAS[:1]))
    assert result["figures"] == plain["figures"]  # which the first test compares with Opacus's own

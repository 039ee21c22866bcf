"""Registrations deferred until a library is imported (``dp_tangent.lazy.when_imported``): timm's types are
registered only once timm is loaded, so that a job without a timm network never imports it."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from dp_tangent import lazy


@pytest.fixture
def pending(monkeypatch: pytest.MonkeyPatch) -> dict:
    fresh: dict = {}
    monkeypatch.setattr(lazy, "_PENDING", fresh)
    return fresh


def test_a_registration_waits_for_its_module_then_runs_once(pending: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = []
    lazy.when_imported("fake_library", lambda: ran.append("a"))
    lazy.when_imported("fake_library", lambda: ran.append("b"))
    lazy.run_pending()
    assert ran == []  # not imported yet
    monkeypatch.setitem(sys.modules, "fake_library", types.ModuleType("fake_library"))
    lazy.run_pending()
    lazy.run_pending()
    assert ran == ["a", "b"] and pending == {}
    lazy.when_imported("fake_library", lambda: ran.append("c"))  # imported already: at once
    assert ran == ["a", "b", "c"]


def test_a_registration_that_fails_stays_pending_and_the_others_still_run(pending: dict,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ran, calls = [], []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # e.g. Ctrl-C while it first ran
        ran.append("flaky")

    lazy.when_imported("fake_library", flaky)
    lazy.when_imported("fake_library", lambda: ran.append("after"))
    monkeypatch.setitem(sys.modules, "fake_library", types.ModuleType("fake_library"))
    with pytest.raises(KeyboardInterrupt):
        lazy.run_pending()
    assert ran == [] and "fake_library" in pending
    lazy.run_pending()
    assert ran == ["flaky", "after"] and pending == {}


def test_a_registration_that_looks_up_a_registry_runs_once(pending: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = []

    def nested() -> None:
        ran.append("nested")
        lazy.run_pending()  # as grad_samplers.register does, through twins.supported_types

    lazy.when_imported("fake_a", nested)
    lazy.when_imported("fake_b", lambda: ran.append("b"))
    monkeypatch.setitem(sys.modules, "fake_a", types.ModuleType("fake_a"))
    monkeypatch.setitem(sys.modules, "fake_b", types.ModuleType("fake_b"))
    lazy.run_pending()
    assert ran == ["nested", "b"] and pending == {}


def test_a_family_registered_before_its_built_in_module_loads_is_kept() -> None:
    code = ("from dp_tangent.backbones.families import BackboneFamily, family, register_family\n"
            "mine = register_family(BackboneFamily('mlp', build=None, describe=None))\n"
            "import dp_tangent.backbones.mlp_family\n"
            "print(family('mlp') is mine)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "True"


def test_timm_imported_after_the_tangent_code_still_gets_its_twins() -> None:
    code = ("import sys; import dp_tangent.tangent.twins as twins; import dp_tangent.training.grad_samplers as gs\n"
            "assert 'timm' not in sys.modules\n"
            "from timm.layers import BatchNormAct2d\n"
            "twin = twins.make_twin(BatchNormAct2d(8), {'weight'})\n"
            "print(type(twin).__name__, gs.hookable(twin), twins.is_batch_norm_act(twin))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "TangentBatchNormAct2d True True"

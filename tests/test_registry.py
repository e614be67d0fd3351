"""si_jax.registry: one Registry for tasks, credit functions and audit gates."""

import sys

import pytest

from si_jax.registry import Registry


def test_register_get_and_errors_that_name_the_field():
  reg = Registry("credit function", field="config.rl.credit")

  @reg.register("outcome", summary=("a",))
  def outcome():
    return 1

  reg.register("outcome")(outcome)  # the same object again: a re-import, fine
  assert reg.get("outcome") is outcome and reg.names() == ["outcome"]
  assert reg.info("outcome") == {"summary": ("a",)} and "outcome" in reg
  with pytest.raises(ValueError, match=r"config.rl.credit must be one of \['outcome'\], got "
                                       r"'outcom'; did you mean 'outcome'\?"):
    reg.get("outcom")
  with pytest.raises(ValueError, match="credit function 'outcome' is registered twice"):
    reg.add("outcome", lambda: 2)


def test_modules_register_on_first_lookup_and_real_missing_dependencies_surface(
    tmp_path, monkeypatch):
  import si_jax.registry as registry_lib
  reg = Registry("task", modules=("_si_plugin", "_si_not_installed"))
  monkeypatch.setattr(registry_lib, "_TEST_REGISTRY", reg, raising=False)
  (tmp_path / "_si_plugin.py").write_text(
      "import si_jax.registry as r\nr._TEST_REGISTRY.add('toy', object)\n")
  (tmp_path / "_si_broken.py").write_text("import _si_missing_dependency\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert "_si_plugin" not in sys.modules
  assert reg.names() == ["toy"] and reg.get("toy") is object  # imported on the first lookup
  with pytest.raises(ModuleNotFoundError, match="_si_missing_dependency"):
    Registry("task", modules=("_si_broken",)).names()
  monkeypatch.delitem(sys.modules, "_si_plugin")


def test_the_config_schema_lists_what_the_method_implements():
  """configs (core) lists the choices so a config validates without importing the method."""
  from si_jax import configs
  from si_jax.si import audit, locate
  assert sorted(configs.AUDIT_GATES) == audit.GATES.names()
  assert set(configs.CORRECTIONS) == {"repair", *locate.CORRECTIONS}

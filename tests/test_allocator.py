"""SI_ALLOCATOR: which environment a re-executed si-train / si-bench gets, and one real re-exec."""

import os
import subprocess
import sys

import pytest

from si_jax import allocator


@pytest.fixture
def libs(tmp_path):
  """A fake library directory holding jemalloc and tcmalloc, and an empty one."""
  full = tmp_path / "full"
  full.mkdir()
  (full / "libjemalloc.so.2").touch()
  (full / "libtcmalloc_minimal.so.4").touch()
  empty = tmp_path / "empty"
  empty.mkdir()
  return [str(full)], [str(empty)]


def test_auto_prefers_jemalloc_with_its_retaining_conf(libs):
  full, _ = libs
  name, env = allocator.plan({}, full)
  assert name == "jemalloc"
  assert env == {"LD_PRELOAD": os.path.join(full[0], "libjemalloc.so.2"),
                 "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1",
                 allocator.ACTIVE_ENV: "jemalloc"}


def test_explicit_tcmalloc_keeps_an_existing_preload_after_it(libs):
  full, _ = libs
  name, env = allocator.plan({"SI_ALLOCATOR": "tcmalloc", "LD_PRELOAD": "/x/libfoo.so"}, full)
  assert name == "tcmalloc" and "MALLOC_CONF" not in env
  assert env["LD_PRELOAD"] == os.path.join(full[0], "libtcmalloc_minimal.so.4") + " /x/libfoo.so"


def test_auto_prefers_mimalloc_from_the_wheel_with_its_retaining_option(libs, tmp_path):
  full, _ = libs
  wheel = tmp_path / "cmeel.prefix" / "lib"
  wheel.mkdir(parents=True)
  (wheel / "libmimalloc.so.3").touch()
  name, env = allocator.plan({}, [str(wheel)] + full)
  assert name == "mimalloc"
  assert env == {"LD_PRELOAD": str(wheel / "libmimalloc.so.3"), "MIMALLOC_PURGE_DELAY": "-1",
                 allocator.ACTIVE_ENV: "mimalloc"}
  # the package's own library directory is searched by default when the wheel is installed
  assert allocator.LIB_DIRS[:len(allocator._wheel_lib_dirs())] == allocator._wheel_lib_dirs()


def test_auto_without_libraries_tunes_glibc(libs):
  _, empty = libs
  name, env = allocator.plan({"GLIBC_TUNABLES": "glibc.foo=1"}, empty)
  assert name == "glibc" and "LD_PRELOAD" not in env
  assert env["GLIBC_TUNABLES"] == "glibc.foo=1:" + allocator.GLIBC_TUNABLES


def test_nothing_to_do_when_system_chosen_already_active_or_user_preloaded(libs):
  full, _ = libs
  assert allocator.plan({"SI_ALLOCATOR": "system"}, full) == ("system", {})
  assert allocator.plan({allocator.ACTIVE_ENV: "jemalloc"}, full) == ("jemalloc", {})
  assert allocator.plan({"LD_PRELOAD": "/opt/libtcmalloc.so"}, full) == ("tcmalloc", {})


def test_errors_name_the_variable(libs):
  _, empty = libs
  with pytest.raises(ValueError, match="SI_ALLOCATOR must be one of .*got 'hoard'"):
    allocator.plan({"SI_ALLOCATOR": "hoard"}, empty)
  with pytest.raises(ValueError, match="SI_ALLOCATOR=mimalloc: no libmimalloc.so.3 "):
    allocator.plan({"SI_ALLOCATOR": "mimalloc"}, empty)
  with pytest.raises(ValueError, match="SI_ALLOCATOR=jemalloc: no libjemalloc.so.2 .*apt-get"):
    allocator.plan({"SI_ALLOCATOR": "jemalloc"}, empty)


def test_loaded_reads_the_mapped_libraries(tmp_path):
  maps = tmp_path / "maps"
  maps.write_text("7f00-7f10 r-xp 0 00:00 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
  assert allocator.loaded(str(maps)) == "jemalloc"
  maps.write_text("7f00-7f10 r-xp 0 00:00 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
  assert allocator.loaded(str(maps)) in ("glibc", "system")


def test_reexec_runs_the_same_command_once_with_the_new_environment():
  code = ("from si_jax import allocator; allocator.reexec_if_needed(); import os; "
          "print(allocator.loaded(), os.environ.get('GLIBC_TUNABLES'), flush=True)")
  env = {k: v for k, v in os.environ.items()
         if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", allocator.ACTIVE_ENV)}
  out = subprocess.run([sys.executable, "-c", code], env={**env, "SI_ALLOCATOR": "glibc"},
                       capture_output=True, text=True, timeout=120, check=True).stdout
  assert out.splitlines() == [f"glibc {allocator.GLIBC_TUNABLES}"]  # printed once: one exec
  out = subprocess.run([sys.executable, "-c", code], env={**env, "SI_ALLOCATOR": "system"},
                       capture_output=True, text=True, timeout=120, check=True).stdout
  assert out.splitlines() == ["system None"]

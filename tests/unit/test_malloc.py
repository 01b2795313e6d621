"""The operator's glibc malloc tuning (model_traffic.malloc), measured in child processes.

Arenas are counted from glibc itself: malloc_info(3) lists one <heap> per arena. Each child process below starts
eight threads that allocate, which without a limit gives each of them an arena of its own.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import subprocess
import sys
import textwrap
import threading

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")

PROGRAM = textwrap.dedent("""\
    import ctypes, ctypes.util, re, sys, tempfile, threading
    if sys.argv[1] == "limited":
        from model_traffic.malloc import limit_arenas
        limit_arenas()
    barrier = threading.Barrier(8)
    def allocate():
        barrier.wait()
        blocks = [bytearray(200_000) for _ in range(50)]  # above obmalloc's size: glibc malloc serves them
        barrier.wait()
    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for thread in threads: thread.start()
    for thread in threads: thread.join()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile() as out:
        stream = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        print(len(re.findall(r"<heap nr=", open(out.name).read())))
    """)


def arenas(mode: str, **env: str) -> int:
    environment = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    result = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True,
                            env={**environment, **env}, timeout=60)
    return int(result.stdout.strip())


def test_the_operator_uses_at_most_two_arenas_where_its_threads_would_each_get_one() -> None:
    assert ctypes.util.find_library("c")
    assert arenas("unlimited") > 2  # the threads do get arenas of their own: the check below can fail
    assert arenas("limited") <= 2


def test_an_explicit_malloc_arena_max_wins() -> None:
    assert arenas("limited", MALLOC_ARENA_MAX="8") > 2


TRIMMED = textwrap.dedent("""\
    import sys
    from model_traffic import malloc
    def resident_mib():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    # 200 MiB in blocks glibc serves from its heap (above obmalloc's 512 bytes, below the mmap threshold), every
    # other one freed: each hole spans whole pages, but the heap's top stays in use, so free(3) alone gives
    # nothing back.
    blocks = [bytearray(16_000) for _ in range(12_500)]
    del blocks[::2]
    before = resident_mib()
    released = malloc.trim() if sys.argv[1] == "trim" else False
    print(before, resident_mib(), released)
    """)


def resident_before_and_after(mode: str) -> tuple[float, float, bool]:
    result = subprocess.run([sys.executable, "-c", TRIMMED, mode], capture_output=True, text=True, check=True,
                            timeout=60)
    before, after, released = result.stdout.split()
    return float(before), float(after), released == "True"


def test_trimming_gives_freed_heap_memory_back_that_free_alone_keeps() -> None:
    before, after, _ = resident_before_and_after("keep")
    assert after > before - 10  # without a trim the freed half stays resident: the check below can fail
    before, after, released = resident_before_and_after("trim")
    assert released and after < before - 50, (before, after)


def test_the_operator_trims_again_and_again_on_a_thread_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from model_traffic import malloc

    trims: list[str] = []
    stop = threading.Event()

    def counted_trim() -> bool:
        trims.append(threading.current_thread().name)
        if len(trims) == 3:
            stop.set()
        return True

    monkeypatch.setattr(malloc, "trim", counted_trim)
    thread = malloc.trim_periodically(interval=0.01, stop=stop)
    assert thread is not None and thread.daemon
    thread.join(5)
    assert not thread.is_alive() and trims == ["malloc-trim"] * 3

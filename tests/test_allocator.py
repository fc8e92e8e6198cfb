"""pclab.allocator: freed tensor memory stays in the heap for the next tick to reuse."""

from __future__ import annotations

import sys

import pytest
import torch

import pclab.allocator as allocator

glibc = pytest.mark.skipif(allocator.heap_info() is None, reason="glibc's mallopt/mallinfo2 only")


def _mapped_and_free() -> tuple[int, int]:
    """(bytes in mmapped blocks, free bytes kept inside the heap)."""
    info = allocator.heap_info()
    return info.hblkhd, info.fordblks


@glibc
def test_a_freed_activation_sized_tensor_stays_in_the_heap_for_reuse():
    assert allocator.retain_freed_memory() is True
    mapped_before, _ = _mapped_and_free()
    block = torch.empty(4 * 1024 * 1024 // 4)  # 4 MiB: glibc's default would mmap it
    mapped_during, _ = _mapped_and_free()
    del block
    _, free_after = _mapped_and_free()
    assert mapped_during == mapped_before  # served from the heap, not a fresh mapping
    assert free_after >= 4 * 1024 * 1024  # and kept there once freed, not returned to the system


@glibc
def test_retaining_is_idempotent():
    assert allocator.retain_freed_memory() and allocator.retain_freed_memory()


@pytest.mark.parametrize("bad", [0, -1, 2 ** 31, 1.5, "1G"])
def test_a_bad_trim_threshold_is_refused_before_anything_changes(bad):
    with pytest.raises(ValueError, match="trim_threshold must be a positive int"):
        allocator.retain_freed_memory(bad)


def test_off_glibc_nothing_changes_and_it_says_so(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    allocator._glibc.cache_clear()
    try:
        assert allocator.retain_freed_memory() is False
    finally:
        monkeypatch.undo()
        allocator._glibc.cache_clear()

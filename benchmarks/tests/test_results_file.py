from pathlib import Path

from benchmarks.machine import cpu_family
from benchmarks.results_file import END, KEEP_MARKER, START, TITLE, rewrite, sections, split
from benchmarks.tests.test_machine import ZEN4

AMX, AVX512 = "x86 with AMX-BF16", "x86 with AVX512-BF16 (no AMX)"
HAND = KEEP_MARKER + "\n\n## By hand\n\nmeasured once, kept  \ttrailing spaces and all\n"


def block(family: str, body: str) -> str:
    return START.format(family) + body + END.format(family)


def test_rewrite_replaces_only_the_running_familys_section():
    zen = block(AVX512, "# Results on AVX512\n\n| a |\n|---|\n| 1 |\n\n")
    old = TITLE + block(AMX, "# Results on AMX, old\n\n") + "\n" + zen + "\n" + HAND
    new = rewrite(old, AMX, "# Results on AMX, new\n")
    assert zen in new, "the other family's section must be copied byte for byte"
    assert new.endswith(HAND) and split(new)[1] == HAND
    assert sections(new) == {AMX: "# Results on AMX, new\n\n", AVX512: sections(old)[AVX512]}
    assert list(sections(new)) == [AMX, AVX512], "a replaced section keeps its place"
    assert "AMX, old" not in new


def test_a_new_family_goes_after_the_others():
    old = TITLE + block(AVX512, "zen\n\n") + "\n" + HAND
    new = rewrite(old, AMX, "amx\n")
    assert list(sections(new)) == [AVX512, AMX]
    assert rewrite(new, AMX, "amx again\n").count(START.format(AMX)) == 1


def test_a_file_without_family_markers_is_replaced_above_the_keep_marker():
    old = "# batchllm benchmark results\n\nWritten by an older harness.\n\n" + HAND
    new = rewrite(old, AMX, "# Results on AMX\n")
    assert new == TITLE + block(AMX, "# Results on AMX\n\n") + "\n" + HAND
    assert rewrite("", AMX, "x\n") == TITLE + block(AMX, "x\n\n") + "\n"


def test_the_committed_file_keeps_the_epyc_run_as_its_family_section():
    text = (Path(__file__).parents[1] / "RESULTS.md").read_text()
    found = sections(text)
    assert list(found)[0] == cpu_family(set(ZEN4.split()))
    assert found[AVX512].startswith(f"# Results on {AVX512} — AMD EPYC, measured 2026-12-01\n")
    assert KEEP_MARKER in text
    for family, body in found.items():
        assert rewrite(text, family, body) == text, "a no-op rewrite must change nothing"

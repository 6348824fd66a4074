"""benchmarks/ort_memory_pattern.py: both settings run in their own processes and report each call."""
from benchmarks import ort_memory_pattern


def test_both_settings_report_a_peak_and_a_time_per_call(small_models, capsys):
    assert ort_memory_pattern.main([str(small_models["cond"][1]), "--batches", "1", "2", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("memory pattern") and [line.split()[0] for line in lines[1:]] == ["off", "on"]
    for line in lines[1:]:
        cells = line.split("  ")[-4:]  # load, then one per batch
        peaks = [int(c.split()[0]) for c in cells]
        assert peaks == sorted(peaks) and peaks[0] > 0  # a peak only grows
        assert all(c.split()[1].strip("()").isdigit() for c in cells[1:])

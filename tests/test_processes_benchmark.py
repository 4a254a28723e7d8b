"""The 1-vs-N-processes benchmark (recbole_mmm4rec.benchmark.processes): log parsing and arguments.
The measurement itself starts torchrun runs of minutes; README "Several processes" has its figures."""

import pytest

from recbole_mmm4rec.benchmark.processes import epoch_seconds, main


def test_epoch_times_are_read_from_recboles_coloured_console_log():
    log = ("\x1b[1;32mepoch 0 training\x1b[0m [\x1b[1;34mtime\x1b[0m: 12.34s, \x1b[1;34mtrain loss\x1b[0m: 1.0]\n"
           "\x1b[1;32mepoch 0 evaluating\x1b[0m [\x1b[1;34mtime\x1b[0m: 3.00s, valid_score: 0.1]\n"
           "epoch 1 training [time: 9.50s, train loss: 0.9]\n")
    assert epoch_seconds(log) == [12.34, 9.5]


@pytest.mark.parametrize("arguments", [["--processes", "1"], ["--epochs", "1"], ["--repeats", "0"]])
def test_bad_arguments_are_refused(arguments, capsys):
    with pytest.raises(SystemExit):
        main(arguments)
    assert "--processes >= 2" in capsys.readouterr().err

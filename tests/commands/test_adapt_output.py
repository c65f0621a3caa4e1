"""``gaincell adapt`` prints one short line per stage: numbers and words, with lists only counted."""

from gaincell.commands.adapt import stage_line


def test_the_initialise_stage_is_one_short_line():
    layers = [{name: [0.123456] * 9 for name in "qkvo"} for _ in range(30)]  # kilobytes as JSON
    line = stage_line({"layers": layers, "batches": 32, "statistics_tokens": 16384})
    assert line == "layers [30], batches 32, statistics_tokens 16,384"


def test_a_training_stage_keeps_its_numbers():
    line = stage_line({"step": 156, "loss": 3.14159, "eval_loss": None, "checkpoint": "runs/x/checkpoints/step-156"})
    assert line == "step 156, loss 3.142, eval_loss None, checkpoint runs/x/checkpoints/step-156"
    assert "\n" not in stage_line({"note": "x" * 500}) and len(stage_line({"note": "x" * 500})) < 80

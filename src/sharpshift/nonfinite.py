"""A NaN or inf loss stops the run, naming the step and the loss term, or (trainer.on_nonfinite=skip)
skips the step. The check runs inside the closure, before backward, so a bad value never reaches the
weights; with several processes they agree first, so that all stop or skip the same step together."""
from __future__ import annotations

import torch

from sharpshift.errors import UserError
from sharpshift.losses.dist import all_true
from sharpshift.steps import StepOutput


class NonFiniteLoss(UserError):
    def __init__(self, step: int, term: str, value: float):
        self.step, self.term, self.value = step, term, value
        super().__init__(f"non-finite loss at step {step}: term {term!r} is {value}; lower optim.lr, set "
                         "optim.grad_clip, or set trainer.on_nonfinite=skip to skip such steps")


def check_finite(out: StepOutput, step: int) -> None:
    """Raise NonFiniteLoss if the loss is NaN or inf in any process, naming the first bad term."""
    if all_true(torch.isfinite(out.loss.detach()).all()):
        return
    for name, value in out.terms.items():
        if not bool(torch.isfinite(value.detach()).all()):
            raise NonFiniteLoss(step, name, float(value.detach().float().flatten()[0]))
    value = float(out.loss.detach().float())
    raise NonFiniteLoss(step, "loss" if not torch.isfinite(torch.tensor(value)) else "loss (in another process)",
                        value)

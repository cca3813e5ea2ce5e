"""When a oneDNN test skips and when it fails (``test_onednn_conv.py``,
``test_onednn_batch_norm.py``): tests/nn is on ``sys.path`` for the files in it."""

from __future__ import annotations

import pytest

from bayescomp.nn import onednn_conv

#: Failures of our own code rather than of the machine (no wheel, compiler, OpenCL device): the
#: sources do not compile, the self check's numbers are wrong, XLA cannot decode a handler's
#: binding, or a handler refuses the shapes it is given (bayescomp/nn/onednn_conv.py,
#: onednn_batch_norm.py and their csrc/). Matched on their messages.
BROKEN = ("building the oneDNN convolution failed", "differs from the reference",
          "Wrong number of", "Failed to decode", "operand shapes disagree",
          "expected NHWC/HWIO operands", "bias must have one entry", "bias buffer and kind",
          "onednn batch norm: expected", "one entry per channel", "workspace is smaller")


def need_onednn():
    """Skip where oneDNN cannot run here (no wheel, compiler or CPU runtime); fail where our
    sources no longer compile against it or the self check finds wrong numbers, so that neither
    can hide behind skipped tests."""
    reason = onednn_conv.unavailable_reason()
    if reason is None:
        return
    if any(marker in reason for marker in BROKEN):
        pytest.fail(f"oneDNN is broken: {reason}")
    pytest.skip(f"oneDNN unavailable here: {reason}")

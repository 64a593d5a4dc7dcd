import pytest
import torch

from spikeshield.runtime.neurons import IFParameters, IFState, if_scan, if_step


def test_reset_to_zero_golden_sequence():
    # threshold 1: v = 0.6, 1.2 -> spike, reset 0; 0.6, 1.2 -> spike; strict: v == 1 does not spike
    xs = torch.tensor([0.6, 0.6, 0.6, 0.6, 1.0, 0.0])
    p = IFParameters(torch.tensor(1.0), "zero")
    state, spikes, potentials = IFState(torch.zeros(())), [], []
    for x in xs:
        s, state = if_step(x, state, p)
        spikes.append(float(s))
        potentials.append(float(state.v))
    assert spikes == [0, 1, 0, 1, 0, 0]
    assert potentials == pytest.approx([0.6, 0.0, 0.6, 0.0, 1.0, 1.0])


def test_reset_by_subtraction_golden_sequence():
    xs = torch.tensor([0.7, 0.7, 0.7, 0.7])
    p = IFParameters(torch.tensor(1.0), "subtract")
    state, spikes, potentials = IFState(torch.zeros(())), [], []
    for x in xs:
        s, state = if_step(x, state, p)
        spikes.append(float(s))
        potentials.append(round(float(state.v), 6))
    assert spikes == [0, 1, 1, 0]
    assert potentials == pytest.approx([0.7, 0.4, 0.1, 0.8])


def test_matches_norse_iaf_for_reset_to_zero():
    from norse.torch.functional.iaf import IAFFeedForwardState, IAFParameters, iaf_feed_forward_step

    torch.manual_seed(0)
    xs = torch.rand(20, 5, 7) * 0.8
    ours = if_scan(xs, IFParameters(torch.tensor(1.0), "zero"))
    state = IAFFeedForwardState(v=torch.zeros(5, 7))
    theirs = []
    for x in xs:
        z, state = iaf_feed_forward_step(x, state, IAFParameters(v_th=torch.tensor(1.0), method="heaviside"))
        theirs.append(z)
    assert torch.equal(ours, torch.stack(theirs))


def test_constant_current_scan_equals_repeated_sequence():
    x = torch.rand(3, 4) * 2
    p = IFParameters(torch.tensor(0.9), "subtract")
    assert torch.equal(if_scan(x, p, timesteps=6), if_scan(x.expand(6, 3, 4), p))

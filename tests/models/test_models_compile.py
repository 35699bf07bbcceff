"""torch.compile of a tiny resnet18_cifar on CPU: one full graph (our neuron is a torch.library custom op),
same logits and gradients as eager, no recompilation across reset_net.

Backend ``aot_eager`` (Dynamo + AOTAutograd, i.e. the whole tracing path, without code generation): the default
``inductor`` backend needed ~90 s on the project's 2-core CPU machine for this model's forward + backward, too slow
for CI; inductor only adds code generation after the same graph capture.
"""

from __future__ import annotations

import copy

import pytest
import torch
from spikingjelly.activation_based import functional
from torch._dynamo.backends.registry import lookup_backend

from sj_resnet.models import resnet18_cifar


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = resnet18_cifar(width=4, num_classes=3, T=2, backend="torch")
    eager = copy.deepcopy(model)
    aot_eager = lookup_backend("aot_eager")
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return aot_eager(gm, example_inputs)

    compiled = torch.compile(model, backend=counting_backend, fullgraph=True)
    x = torch.rand(2, 3, 16, 16)
    target = torch.tensor([0, 2])
    for _ in range(2):  # the second batch must reuse the graph
        logits = []
        for m, fn in ((eager, eager), (model, compiled)):
            m.zero_grad()
            functional.reset_net(m)
            logits.append(fn(x))
            torch.nn.functional.cross_entropy(logits[-1], target).backward()
        torch.testing.assert_close(logits[1], logits[0])
        for (k, a), (_, b) in zip(eager.named_parameters(), model.named_parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, msg=lambda s, k=k: f"grad of {k}: {s}")
    assert len(compiles) == 1, f"{len(compiles)} graphs compiled; expected one full graph reused across batches"

"""The install works: composer and streaming import beside torch >= 2.10 and train/read for real."""

import numpy as np
import torch


def test_versions_are_the_ones_this_project_needs():
    import composer
    import streaming
    import transformers

    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    assert (major, minor) >= (2, 10), "varlen_attn with sliding windows needs torch >= 2.10"
    assert composer.__version__ == "0.32.1"
    assert streaming.__version__ == "0.13.0"
    assert int(transformers.__version__.split(".")[0]) >= 5
    from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (shipped with torch, no flash-attn needed)


def test_composer_trains_two_batches_on_cpu(tmp_path):
    from composer import Trainer
    from composer.models import ComposerClassifier
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    model = ComposerClassifier(net, num_classes=2)
    before = [p.detach().clone() for p in net.parameters()]
    data = TensorDataset(torch.randn(16, 8), torch.randint(0, 2, (16,)))
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(data, batch_size=8),
        max_duration="2ba",
        optimizers=torch.optim.SGD(net.parameters(), lr=0.1),
        device="cpu",
        save_folder=str(tmp_path / "ckpt"),
        save_interval="2ba",
        progress_bar=False,
        log_to_console=False,
    )
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 2
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, net.parameters()))
    assert list((tmp_path / "ckpt").glob("*.pt")), "composer wrote no checkpoint"


def test_streaming_writes_and_reads_mds(tmp_path):
    from streaming import MDSWriter, StreamingDataset

    rows = [np.arange(n, dtype=np.uint16) for n in (3, 7, 1)]
    with MDSWriter(out=str(tmp_path / "mds"), columns={"input_ids": "ndarray:uint16"}) as w:
        for r in rows:
            w.write({"input_ids": r})
    ds = StreamingDataset(local=str(tmp_path / "mds"), shuffle=False, batch_size=1)
    got = [ds[i]["input_ids"] for i in range(len(ds))]
    assert [g.tolist() for g in got] == [r.tolist() for r in rows]

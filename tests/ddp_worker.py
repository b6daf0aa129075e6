"""torchrun worker for test_ddp.py: train.py's own Hydra entry, plus a per-rank dump of the final parameters."""
import torch
import torch.distributed as dist

from attnvision.cli import hydra_entry
from attnvision.engine import train


def train_and_dump(cfg):
    result = train(cfg)
    params = {k: v.detach().clone() for k, v in result.model.named_parameters()}
    torch.save({"params": params, "run_dir": cfg.paths.output_dir},
               f"{cfg.paths.log_dir}/rank{dist.get_rank()}.pt")


if __name__ == "__main__":
    hydra_entry("train", train_and_dump)()

"""Count parameters, MACs and FLOPs: ``python count_flops.py model=... [data.image_size=224] [format=json]``."""
from attnvision.cli import hydra_entry
from attnvision.engine.count import count_flops

main = hydra_entry("count_flops", count_flops)

if __name__ == "__main__":
    main()

"""``python -m sj_resnet`` / ``torchrun -m sj_resnet``: the ``sj-resnet`` command."""

from .cli import main

raise SystemExit(main())

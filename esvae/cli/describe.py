"""Print a model's resolved configuration and parameter count as JSON."""

from __future__ import annotations

import json

from ._common import add_model_args, model_overrides


def register(sub) -> None:
    d = sub.add_parser("describe", help="print the resolved configuration and parameter count as JSON")
    add_model_args(d)
    d.set_defaults(run=run)


def run(args) -> int:
    from ..data import data_source
    from ..models import build_model, count_parameters, model_entry

    source = data_source(args.dataset)
    model = build_model(args.model, source.setting, **model_overrides(args))
    per_module = {
        name: sum(p.numel() for p in child.parameters())
        for name, child in model.named_children()
        if sum(p.numel() for p in child.parameters())
    }
    report = {
        "model": args.model,
        "dataset": args.dataset,
        "model_config": model.config.to_dict(),
        "latent": model.latent_description,
        "parameters": count_parameters(model),
        "parameters_by_module": per_module,
        "paper_train_config": model_entry(args.model).paper_train(source.setting).to_dict(),
    }
    print(json.dumps(report, indent=2))
    return 0

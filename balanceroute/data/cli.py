"""``balanceroute prepare-data``: fetch the datasets and model weights that real runs need, then say how to use them.

Why a command rather than a README recipe: a hand-run ``wget`` on each cluster is where reproductions go wrong
(a different ShareGPT file, a half-downloaded trace). This command takes every source from the configuration,
verifies what it fetches and refuses to leave a partial file under a name an experiment reads.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from balanceroute.cli_args import int_at_least
from balanceroute.data.catalog import DatasetSpec, ModelSpec, load_catalog, load_models, select
from balanceroute.data.errors import DataError, MissingDataError
from balanceroute.data.models import PreparedModel, hub_cache, prepare_model
from balanceroute.data.prepare import PreparedFile, fetch_command, prepare_dataset

EXAMPLES = """\
examples:
  balanceroute prepare-data                                   # all datasets into $BALANCEROUTE_DATA_DIR or ./data
  balanceroute prepare-data --datasets azure_conv --dest /shared/balanceroute-data
  balanceroute prepare-data --models qwen3_30b_a3b            # weights into the Hugging Face cache (HF_HOME)
  balanceroute prepare-data --offline                         # check that everything is present; fetch nothing
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare-data", help="fetch traces, datasets and model weights for real runs",
        description="Download the datasets (conf/data/default.yaml) and model weights (hf_repo in "
                    "conf/model/<name>.yaml) that experiments need: resumable, checksummed, placed atomically. "
                    "With neither --datasets nor --models, all datasets are prepared and no model.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=_name_list, metavar="NAME[,NAME...]",
                        help="dataset presets to prepare (default: all, unless --models is given)")
    parser.add_argument("--models", type=_name_list, metavar="NAME[,NAME...]", default=[],
                        help="model presets whose weights to fetch (default: none)")
    parser.add_argument("--dest", type=Path, metavar="DIR",
                        help="data directory for datasets (default: data_dir in conf/data/default.yaml, i.e. "
                             "$BALANCEROUTE_DATA_DIR or ./data); models go to the Hugging Face cache (HF_HOME)")
    parser.add_argument("--offline", action="store_true",
                        help="fetch nothing: verify what is present and fail naming what is missing")
    parser.add_argument("--force", action="store_true", help="download again even if a verified copy exists")
    parser.add_argument("--config-dir", type=Path, metavar="DIR",
                        help="configuration tree to read presets from (default: the project's conf/)")
    parser.add_argument("--retries", type=int_at_least(0), default=3, metavar="N",
                        help="retries per file after a dropped connection or server error (default: 3)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Prepare everything selected; 0 if all is in place, 1 if anything failed, 2 for bad input."""
    try:
        data_dir, datasets, models = _plan(args)
    except (ValueError, DataError) as exc:
        _error(str(exc))
        return 2
    files: list[PreparedFile] = []
    snapshots: list[PreparedModel] = []
    missing_files: list[MissingDataError] = []
    missing_models: list[MissingDataError] = []
    failures: list[str] = []
    try:
        for spec in datasets:
            try:
                files.append(prepare_dataset(spec, data_dir, offline=args.offline, force=args.force,
                                             retries=args.retries))
            except MissingDataError as exc:
                missing_files.append(exc)
            except (DataError, OSError) as exc:
                failures.append(f"{spec.name}: {exc}")
        for model in models:
            try:
                snapshots.append(prepare_model(model, offline=args.offline, force=args.force))
            except MissingDataError as exc:
                missing_models.append(exc)
            except DataError as exc:
                failures.append(str(exc))
    except KeyboardInterrupt:
        _error("interrupted; partial downloads are kept as *.part and resume when the command is run again")
        return 130
    _report(files, snapshots, data_dir)
    if missing_files or missing_models:
        _report_missing(missing_files, missing_models, data_dir)
    for failure in failures:
        _error(failure)
    return 1 if missing_files or missing_models or failures else 0


def _plan(args: argparse.Namespace) -> tuple[Path, list[DatasetSpec], list[ModelSpec]]:
    """Resolve the selection against the configuration; ValueError for anything the user must fix."""
    if args.offline and args.force:
        raise ValueError("--offline and --force contradict each other: --force re-downloads")
    catalog = load_catalog(args.config_dir)
    dataset_names = args.datasets if args.datasets is not None else ([] if args.models else list(catalog.datasets))
    datasets = select(dataset_names, catalog.datasets, "dataset")
    models: list[ModelSpec] = []
    if args.models:
        model_catalog = load_models(args.config_dir)
        no_weights = {name: "is a simulator-only preset (its yaml has no hf_repo)" for name in model_catalog.simulated}
        models = select(args.models, model_catalog.fetchable, "model", unavailable=no_weights)
        hub_cache()  # fail now, with the install hint, if huggingface_hub is missing
    if not datasets and not models:
        raise ValueError("nothing to prepare: --datasets and --models select no preset")
    data_dir = Path(os.path.abspath((args.dest or catalog.data_dir).expanduser()))
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"data directory {data_dir} exists but is not a directory")
    return data_dir, datasets, models


def _report(files: list[PreparedFile], snapshots: list[PreparedModel], data_dir: Path) -> None:
    """What is in place and the run.py overrides that use it (stdout: this is the command's output)."""
    if files:
        print(f"datasets in {data_dir}:")
        width = max(len(f.dataset) for f in files)
        for f in files:
            print(f"  {f.dataset:<{width}}  {f.path.name}  {_human(f.size)}  sha256 {f.sha256}  ({f.status})")
        for f in files:
            print(f"  use: python run.py workload={f.dataset} data.data_dir={data_dir}")
        print(f"  (or export BALANCEROUTE_DATA_DIR={data_dir})")
    if snapshots:
        cache = hub_cache()
        print(f"models in the Hugging Face cache {cache}:")
        width = max(len(s.model) for s in snapshots)
        for s in snapshots:
            print(f"  {s.model:<{width}}  {s.repo}{'@' + s.revision if s.revision else ''}  {_human(s.size)}  "
                  f"{s.path}")
        for s in snapshots:
            print(f"  use: HF_HUB_CACHE={cache} HF_HUB_OFFLINE=1 python run.py model={s.model}")


def _report_missing(files: list[MissingDataError], models: list[MissingDataError], data_dir: Path) -> None:
    """One error naming every missing item and the single command that fetches them all."""
    command = fetch_command(datasets=[m.what for m in files], models=[m.what for m in models],
                            dest=data_dir if files else None)
    lines = [f"{len(files) + len(models)} required item(s) not available offline:"]
    lines += [f"  {m}" for m in files + models]
    lines.append(f"fetch with: {command}")
    _error("\n".join(lines))


def _error(message: str) -> None:
    print(f"balanceroute prepare-data: error: {message}", file=sys.stderr)


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _name_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


"""Train and evaluate a model, ours (MMM4Rec, ...) or any RecBole built-in, with RecBole's CLI.

    python run_recbole.py --model=MMM4Rec --dataset=scientific_mm --epochs=3
    python run_recbole.py --model=SASRec --dataset=scientific_mm --config_files="a.yaml b.yaml"
    python run_recbole.py --model=MMM4Rec --stage=pretrain --dataset=office,scientific [--resume | --overwrite]
    python run_recbole.py --model=MMM4Rec --dataset=office --pretrained=saved/MMM4Rec-pretrain-.../best.pth
    python run_recbole.py --model=UniSRec --stage=pretrain --dataset=office,scientific

Several processes: torchrun --nproc_per_node=N run_recbole.py ... (README "Several processes").
Every other ``--key=value`` overrides a config value, as in RecBole. Defaults: properties/.
"""

import argparse

from torch.distributed.elastic.multiprocessing.errors import record

import recbole_mmm4rec


@record  # under torchrun: a failing rank's traceback is what torchrun reports
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="MMM4Rec", help="model name (ours first, then RecBole's)")
    parser.add_argument("--dataset", "-d", default="scientific_mm", help="dataset folder under data_path")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--stage", choices=["finetune", "pretrain"], default="finetune",
                        help="pretrain: MMM4Rec or UniSRec on the union of --dataset=A,B,... with in-batch negatives")
    parser.add_argument("--resume", nargs="?", const="True", default="False",
                        help="pre-training: continue from the run's last.pth")
    parser.add_argument("--overwrite", nargs="?", const="True", default="False",
                        help="pre-training: replace the run already in the checkpoint folder")
    args, _ = parser.parse_known_args()  # the rest is read by RecBole's Config from sys.argv

    config_files = args.config_files.strip().split(" ") if args.config_files else None
    if args.stage == "pretrain":
        pretrainable = recbole_mmm4rec.quick_start.PRETRAINABLE
        if args.model not in pretrainable:
            parser.error(f"--stage=pretrain is for --model={' or --model='.join(pretrainable)}")
        resume, overwrite = (flag.lower() in ("true", "1", "yes") for flag in (args.resume, args.overwrite))
        recbole_mmm4rec.pretrain(args.dataset.split(","), config_files, resume=resume, model=args.model,
                                 overwrite=overwrite)
    else:
        recbole_mmm4rec.run(model=args.model, dataset=args.dataset, config_file_list=config_files)


if __name__ == "__main__":
    main()

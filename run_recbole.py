"""Train and evaluate a model, ours (MMM4Rec, ...) or any RecBole built-in, with RecBole's CLI.

    python run_recbole.py --model=MMM4Rec --dataset=scientific_mm --epochs=3
    python run_recbole.py --model=SASRec --dataset=scientific_mm --config_files="a.yaml b.yaml"

Every other ``--key=value`` overrides a config value, as in RecBole. Defaults: properties/.
"""

import argparse

import recbole_mmm4rec

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="MMM4Rec", help="model name (ours first, then RecBole's)")
    parser.add_argument("--dataset", "-d", default="scientific_mm", help="dataset folder under data_path")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    args, _ = parser.parse_known_args()  # the rest is read by RecBole's Config from sys.argv

    config_files = args.config_files.strip().split(" ") if args.config_files else None
    recbole_mmm4rec.run(model=args.model, dataset=args.dataset, config_file_list=config_files)

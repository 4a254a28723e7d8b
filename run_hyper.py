"""Hyperparameter sweeps with RecBole's params files, on our models and RecBole's (recbole_mmm4rec/tuning.py).

    python run_hyper.py --model=MMM4Rec --dataset=scientific_mm --params_file=hyper.test --tool=hyperopt
    python run_hyper.py --model=MMM4Rec --params_file=hyper.test --tool=ray --algo=random --max_evals=20
    python run_hyper.py --model=SASRec --params_file=sasrec.test --tool=ray --ray_address=10.0.0.1:6379

Every other ``--key=value`` is a fixed config value for all trials, as in run_recbole.py.
"""

import sys

from recbole_mmm4rec.tuning import main

if __name__ == "__main__":
    sys.exit(main())

"""One ScheduleTrainer run for tests/test_huggingface.py (one process, or a rank under torchrun): its counts and weights.

    python tests/huggingface_ddp_run.py OUT   |   torchrun --standalone --nproc-per-node 2 tests/huggingface_ddp_run.py OUT
"""
import os
import sys

import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)
import test_huggingface as th  # noqa: E402
import transformers  # noqa: E402

from growbatch.schedule import Phase, Schedule  # noqa: E402
from growbatch.training.distributed import teardown  # noqa: E402

out = sys.argv[1]
odd = Schedule((Phase(0, 1, 0.1, 25, 0.9), Phase(1, 2, 0.1, 75, 0.9)), dataset_size=th.N)  # shares 13/12, 38/37
torch.manual_seed(0)
model = th.DigitsModel(th.DigitsConfig())
args = transformers.TrainingArguments(output_dir=out, num_train_epochs=2, seed=3, report_to="none", use_cpu=True,
                                      disable_tqdm=True, save_strategy="no",
                                      ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None)
trainer = th.hf.ScheduleTrainer(model, args, schedule=odd, train_dataset=th.Digits(),
                                optimizers=(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), None))
trainer.train()
rank = int(os.environ.get("RANK", 0))
torch.save({"updates": trainer.state.global_step, "samples": sum(map(len, model.trained)),
            "weights": model.state_dict()}, os.path.join(out, f"rank{rank}.pt"))
# The Trainer's DDP wrapper holds the gloo group; left to interpreter exit it can abort the process
# ("terminate called without an active exception"): drop it and leave the group in step (NOTE [teardown]).
del trainer
teardown()

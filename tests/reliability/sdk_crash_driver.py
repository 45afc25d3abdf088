"""SDK side of ``test_sdk_crash.py``: train and save in a loop through the official ``tinker`` SDK
while the test SIGKILLs and restarts the server under it. Run with an SDK venv's interpreter
(it imports nothing of ours): ``python sdk_crash_driver.py TAG STOP_FILE``, with
``TINKER_BASE_URL`` and ``TINKER_API_KEY`` set.

One step: (re)create the training client if needed, ``forward_backward`` + ``optim_step``, then
``save_state`` and ``save_weights_for_sampler``. It prints one flushed line per event, which the
test reads as they come:

- ``READY`` once the SDK is imported and the service client exists;
- ``ACK state|sampler <tinker path>`` for each save whose ``.result()`` returned: the SDK saw
  it complete, so the checkpoint must survive every later kill;
- ``ERR <step> <Type>: <message>`` for each exception (one line); the step is then abandoned,
  the driver waits until the server answers again and resumes from its last acknowledged state
  (a restarted server has no model in memory);
- ``DONE <steps>`` when ``STOP_FILE`` exists (checked between steps).
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import httpx

warnings.simplefilter("ignore")

import tinker  # noqa: E402  (after the warnings filter: the SDK warns on import)
from tinker import types  # noqa: E402

TAG, STOP_FILE = sys.argv[1], sys.argv[2]
BASE_URL = os.environ["TINKER_BASE_URL"]
SEQS = [[(7 * i + 13 * j) % 300 + 1 for j in range(10)] for i in range(2)]
DATA = [
    types.Datum(
        model_input=types.ModelInput.from_ints(seq[:-1]),
        loss_fn_inputs={"target_tokens": seq[1:], "weights": [1.0] * (len(seq) - 1)},
    )
    for seq in SEQS
]
ADAM = types.AdamParams(learning_rate=1e-3)


def emit(*parts: object) -> None:
    line = " ".join(str(p) for p in parts).replace("\n", " \\n ")
    print(line, flush=True)


def wait_for_server() -> None:
    """Until the (restarted) server answers: the test restarts it on the same port."""
    while not os.path.exists(STOP_FILE):
        try:
            if httpx.get(f"{BASE_URL}/api/v1/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def main() -> None:
    service = tinker.ServiceClient()
    emit("READY")
    client = None
    last_state: str | None = None
    step = 0
    while not os.path.exists(STOP_FILE):
        where = "create"
        try:
            if client is None:
                if last_state is None:
                    client = service.create_lora_training_client(
                        base_model="tiny-qwen3", rank=4, seed=7
                    )
                else:
                    client = service.create_training_client_from_state_with_optimizer(last_state)
            where = "train"
            fb = client.forward_backward(DATA, "cross_entropy")
            opt = client.optim_step(ADAM)
            fb.result()
            opt.result()
            where = "save_state"
            path = client.save_state(f"{TAG}-{step}").result().path
            emit("ACK", "state", path)
            last_state = path
            where = "save_sampler"
            path = client.save_weights_for_sampler(f"{TAG}-{step}").result().path
            emit("ACK", "sampler", path)
        except Exception as exc:  # every failure is reported; the test judges whether it is clear
            emit("ERR", where, f"{type(exc).__name__}: {exc}")
            client = None
            wait_for_server()
        step += 1
    emit("DONE", step)


if __name__ == "__main__":
    main()

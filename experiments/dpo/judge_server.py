"""A loopback OpenAI-compatible judge for the DPO miniature: every answer gets the same quality
scores (4 of 5 on each dimension), so the pairs are ranked by their length score S_l. A toy model's
text is word salad; a real judge would have nothing to tell apart.
    python experiments/dpo/judge_server.py URL_FILE    # writes its base URL there, serves until killed
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from lw.testing.openai_server import OpenAIServer, Reply, judge_json


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with OpenAIServer(lambda body, attempt: Reply(judge_json(4))) as server:
        Path(sys.argv[1]).write_text(server.base_url + "\n")
        stop.wait()


if __name__ == "__main__":
    main()

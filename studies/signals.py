"""How a study is stopped cleanly: Ctrl-C, SIGTERM (a scheduler, `kill`, `docker stop`, a spot
reclaim) or the study itself (a storage that filled up, or that a node does not see: iabf/record.STOPS) ends the fit
with Tune's last save, so --resume finishes the study; a second signal stops it at once."""
from __future__ import annotations

import contextlib
import os
import signal


class StopSignal:
    """Ctrl-C or SIGTERM during the fit stops the study cleanly: Tune saves its state and returns, and
    --resume finishes the study (not Ray's native abort, exit 134, which SIGTERM would give). The stop
    is remembered, since one that lands between two trials leaves no trial unfinished to show it.
    Tune's own SIGINT handler is off (TUNE_DISABLE_SIGINT_HANDLER): ours calls the one Tune keeps for
    SIGUSR1 while it fits. A second signal, or one outside the fit, raises KeyboardInterrupt.

    `request(reason)` is the same stop from inside the driver (a Tune callback); the latest StopSignal
    made is the one that `request_stop` reaches, since Tune restores callbacks from their pickle."""

    current: StopSignal | None = None

    def __init__(self):
        self.received, self.fitting, self.reason, self.fix = None, False, None, None
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle)
        StopSignal.current = self

    def handle(self, sig, frame):
        if not self.stop_fit(signal.Signals(sig).name, sig=sig, frame=frame):
            raise KeyboardInterrupt

    def request(self, reason: str, fix: str) -> None:
        """Stop the fit as a signal would, for `reason` (said by the driver at the end, with `fix`)."""
        if self.stop_fit("the study", reason):
            self.fix = fix

    def stop_fit(self, by: str, reason: str | None = None, sig=signal.SIGUSR1, frame=None) -> bool:
        """Hand the stop to Tune (the SIGUSR1 handler it keeps while it fits), once; False when there is
        no fit to stop, or it is stopping already."""
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if not self.fitting or self.received or not callable(tune_stop):
            return False
        self.received, self.reason = by, reason
        tune_stop(sig, frame)
        return True

    @contextlib.contextmanager
    def during_fit(self):
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)   # only the handler this fit installs counts
        self.fitting = True
        try:
            yield
        finally:
            self.fitting = False


def request_stop(reason: str, fix: str) -> None:
    """Stop the study being fitted in this process, if any, for `reason`; `fix` says what to do before --resume."""
    if StopSignal.current is not None:
        StopSignal.current.request(reason, fix)

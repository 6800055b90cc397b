"""Double-entry bookkeeping for the shop."""

from dataclasses import dataclass, field


@dataclass
class Entry:
    ref: str
    amount_cents: int
    memo: str = ""
    voided: bool = False


@dataclass
class Ledger:
    owner: str
    entries: list[Entry] = field(default_factory=list)

    def post_entry_v2(self, ref: str, amount_cents: int, memo: str = "") -> Entry:
        entry = Entry(ref, amount_cents, memo)
        self.entries.append(entry)
        return entry

    def void_entry_by_ref(self, ref: str) -> bool:
        for entry in self.entries:
            if entry.ref == ref and not entry.voided:
                entry.voided = True
                return True
        return False

    def net_position_cents(self) -> int:
        return sum(e.amount_cents for e in self.entries if not e.voided)

    def reconcile_month_end(self, month: str) -> dict[str, int]:
        return {"month": len(month), "net": self.net_position_cents()}


def open_ledger(owner: str) -> Ledger:
    return Ledger(owner)

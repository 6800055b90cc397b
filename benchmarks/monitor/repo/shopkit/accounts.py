"""Customer accounts and loyalty credit."""

from shopkit.ledger import Ledger


class CustomerAccount:
    def __init__(self, customer_id: str, ledger: Ledger):
        self.customer_id = customer_id
        self.ledger = ledger
        self.loyalty_points = 0
        self.frozen = False

    def apply_loyalty_credit(self, points: int) -> int:
        self.loyalty_points += points
        return self.loyalty_points

    def freeze_for_review(self, reason: str) -> None:
        self.frozen = True

    def lifetime_spend_cents(self) -> int:
        return -self.ledger.net_position_cents()


def find_account(customer_id: str, ledger: Ledger) -> CustomerAccount:
    return CustomerAccount(customer_id, ledger)

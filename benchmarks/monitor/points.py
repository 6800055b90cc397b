"""The completion points: code prefixes (the start of a script in repo/) ending at an
attribute-access dot, where the method or attribute must come from shopkit's own classes."""

POINTS = {
    "ledger-post": """from shopkit.ledger import Ledger

ledger = Ledger("corner-shop")
# record today's card sales
ledger.""",
    "ledger-void": '''from shopkit.ledger import Ledger


def cancel_sale(ledger: Ledger, ref: str) -> None:
    """Undo a sale that was refunded."""
    ledger.''',
    "ledger-month": """from shopkit.ledger import open_ledger

book = open_ledger("corner-shop")
book.post_entry_v2("s-1", 1250, "coffee")
# close the books for March
summary = book.""",
    "ledger-balance": """from shopkit.ledger import Ledger


def print_balance(ledger: Ledger) -> None:
    cents = ledger.""",
    "inventory-restock": """from shopkit.inventory import InventoryStore

store = InventoryStore("north-1")
# a delivery of 40 mugs arrived from the supplier
store.""",
    "inventory-reserve": """from shopkit.inventory import InventoryStore


def place_order(store: InventoryStore, order_id: str, sku: str, units: int) -> bool:
    ok = store.""",
    "inventory-release": """from shopkit.inventory import InventoryStore


def cancel_order(store: InventoryStore, order_id: str, sku: str, units: int) -> None:
    # give the units back to the shelf
    store.""",
    "inventory-count": """from shopkit.inventory import InventoryStore

store = InventoryStore("north-1")
available = store.""",
    "shipping-route": """from shopkit.inventory import InventoryStore
from shopkit.shipping import ShipmentPlanner

planner = ShipmentPlanner(InventoryStore("north-1"), "LYS")
route = planner.""",
    "shipping-eta": """from shopkit.shipping import ShipmentPlanner


def promise_date(planner: ShipmentPlanner, destination: str) -> float:
    hours = planner.""",
    "shipping-customs": """from shopkit.shipping import ShipmentPlanner


def prepare_export(planner: ShipmentPlanner, order_id: str) -> str:
    # orders to Switzerland need a customs declaration
    return planner.""",
    "accounts-loyalty": """from shopkit.accounts import find_account
from shopkit.ledger import Ledger

account = find_account("c-42", Ledger("corner-shop"))
# reward the customer for their tenth order
account.""",
    "accounts-freeze": """from shopkit.accounts import CustomerAccount


def flag_fraud(account: CustomerAccount) -> None:
    account.""",
    "accounts-spend": """from shopkit.accounts import CustomerAccount


def is_vip(account: CustomerAccount) -> bool:
    return account.""",
}

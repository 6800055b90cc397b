"""Stock levels, reservations and suppliers."""


class InventoryStore:
    def __init__(self, site_code: str):
        self.site_code = site_code
        self.units_on_hand: dict[str, int] = {}
        self.reserved_units: dict[str, int] = {}

    def restock_from_supplier(self, supplier_id: str, sku: str, units: int) -> int:
        self.units_on_hand[sku] = self.units_on_hand.get(sku, 0) + units
        return self.units_on_hand[sku]

    def reserve_units_for_order(self, order_id: str, sku: str, units: int) -> bool:
        free = self.units_on_hand.get(sku, 0) - self.reserved_units.get(sku, 0)
        if free < units:
            return False
        self.reserved_units[sku] = self.reserved_units.get(sku, 0) + units
        return True

    def release_reservation(self, order_id: str, sku: str, units: int) -> None:
        self.reserved_units[sku] = max(0, self.reserved_units.get(sku, 0) - units)

    def sellable_units(self, sku: str) -> int:
        return self.units_on_hand.get(sku, 0) - self.reserved_units.get(sku, 0)

"""Planning shipments between hubs."""

from shopkit.inventory import InventoryStore


class ShipmentPlanner:
    def __init__(self, store: InventoryStore, home_hub: str):
        self.store = store
        self.home_hub = home_hub
        self.legs: list[tuple[str, str]] = []

    def plan_route_via_hubs(self, destination: str, hubs: list[str]) -> list[str]:
        route = [self.home_hub, *hubs, destination]
        self.legs = list(zip(route[:-1], route[1:], strict=True))
        return route

    def estimate_eta_hours(self, destination: str) -> float:
        return 6.0 * max(1, len(self.legs))

    def attach_customs_form(self, order_id: str, country: str) -> str:
        return f"{order_id}-{country}-CN23"

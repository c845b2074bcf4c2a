"""Neural-network blocks shared by the models (PointNet++ modules, attention, fusion)."""

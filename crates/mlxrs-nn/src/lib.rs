//! Neural-network modules, layers, quantization and KV caches on mlxrs.

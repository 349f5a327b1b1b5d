//! Model file load/save (safetensors + polypi.graph). OWNER: model helper.

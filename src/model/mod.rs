//! Model inputs: safetensors files and model directories, and what tensor names say about a
//! tensor's role. Reading only; writing safetensors back is the container's job (`store`).

pub mod dir;
pub mod role;
pub mod safetensors;

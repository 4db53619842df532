//! The prost codec with small starting buffers. tonic's default gives every
//! stream an 8 KiB decode buffer and an 8 KiB encode buffer, allocated up
//! front and kept for the stream's life: 16 KiB of every idle agent session
//! on the controller (and of each agent's). Buffers start at 1 KiB here and
//! grow as a message needs (a blob chunk, a manifest), so large messages cost
//! what they did.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Where a stream's buffers start (they grow on demand).
const BUFFER_BYTES: usize = 1024;

/// tonic's default: how much an encoder buffers before it yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `ProstCodec` with 1 KiB starting buffers (`codec_path` in `build.rs`).
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

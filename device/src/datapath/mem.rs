//! The in-memory wire: the datapath without kernel ports, deterministic, in real or virtual
//! time. Frames go in on a port; what the device sends is kept per port, in order, for whoever
//! holds the other ends (tests, the VNF simulator, benchmarks).

use std::sync::Arc;

use opof_proto::domain::Timestamp;

use super::metrics::{Metrics, Tally};
use super::{gre, Batch, DatapathConfig, Decision, PortId};
use crate::clock::ManualClock;
use crate::control::Device;

/// Frames sent out of one in-memory port, in order, in one buffer (no allocation per frame).
#[derive(Default)]
pub struct FrameQueue {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl FrameQueue {
    fn push(&mut self, parts: &[&[u8]]) {
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        self.ends.push(self.bytes.len());
    }
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    /// The frames, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(a, b)| &self.bytes[a..b])
    }
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// The datapath of a [`Device`] on in-memory ports.
pub struct MemDatapath {
    device: Arc<Device>,
    config: DatapathConfig,
    /// Set in virtual time: frames carry their own timestamps and move this clock.
    clock: Option<Arc<ManualClock>>,
    metrics: Arc<Metrics>,
    out: [FrameQueue; 5],
    scratch: Batch,
    decisions: Vec<Decision>,
    /// The collector copies' outer headers, per next hop.
    templates: gre::Templates,
}

impl MemDatapath {
    /// In real time: frames are handled at the device clock's time.
    pub fn new(device: Arc<Device>, config: DatapathConfig) -> Self {
        MemDatapath {
            device,
            config,
            clock: None,
            metrics: Arc::new(Metrics::new()),
            out: Default::default(),
            scratch: Batch::default(),
            decisions: Vec::new(),
            templates: gre::Templates::default(),
        }
    }

    /// In virtual time: `clock` must be the device's clock; [`MemDatapath::receive_at`] moves it.
    pub fn virtual_time(device: Arc<Device>, config: DatapathConfig, clock: Arc<ManualClock>) -> Self {
        MemDatapath { clock: Some(clock), ..Self::new(device, config) }
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Frames that came in on `port` together, handled as one batch (one lock per shard it touches) at the
    /// clock's current time.
    pub fn receive(&mut self, port: PortId, frames: &[&[u8]]) {
        let mut tally = Tally::default();
        let (config, scratch, decisions) = (&self.config, &mut self.scratch, &mut self.decisions);
        decisions.clear();
        self.device.decide_batch(config, frames.iter().map(|f| (port, *f)), scratch, decisions);
        for (f, d) in frames.iter().zip(&self.decisions) {
            apply(config, port, f, d, &mut self.out, &mut self.templates, &mut tally);
        }
        tally.batches_across_shards = self.scratch.take_across_shards();
        self.metrics.add(&tally);
    }

    /// Frames with their timestamps, in time order (a capture being replayed): the virtual
    /// clock moves to each frame's time before it is handled, so sessions age exactly as the
    /// timestamps say. In real time, the timestamps are ignored.
    pub fn receive_at(&mut self, frames: &[(Timestamp, PortId, &[u8])]) {
        let mut tally = Tally::default();
        let (config, out, clock) = (&self.config, &mut self.out, &self.clock);
        let (scratch, decisions, templates) = (&mut self.scratch, &mut self.decisions, &mut self.templates);
        for (at, port, f) in frames {
            if let Some(c) = clock {
                c.set(*at);
            }
            decisions.clear();
            self.device.decide_batch(config, std::iter::once((*port, *f)), scratch, decisions);
            apply(config, *port, f, &decisions[0], out, templates, &mut tally);
        }
        tally.batches_across_shards = scratch.take_across_shards();
        self.metrics.add(&tally);
    }

    /// Takes what the device sent out of `port` so far.
    pub fn take(&mut self, port: PortId) -> Vec<Vec<u8>> {
        let q = &mut self.out[port.index()];
        let frames = q.iter().map(<[u8]>::to_vec).collect();
        q.clear();
        frames
    }

    /// What the device sent out of `port` so far, without taking it.
    pub fn sent(&self, port: PortId) -> &FrameQueue {
        &self.out[port.index()]
    }

    /// Forgets what was sent out of every port.
    pub fn clear(&mut self) {
        self.out.iter_mut().for_each(FrameQueue::clear);
    }
}

/// Counts a frame received on `port` and carries out its decision on the in-memory wire
/// (inline: it runs once per frame).
#[inline(always)]
fn apply(
    config: &DatapathConfig,
    port: PortId,
    frame: &[u8],
    d: &Decision,
    out: &mut [FrameQueue; 5],
    templates: &mut gre::Templates,
    tally: &mut Tally,
) {
    let t = tally.port(port);
    t.rx_frames += 1;
    t.rx_bytes += frame.len() as u64;
    tally.count(d.class);
    if let Some(p) = d.out {
        out[p.index()].push(&[frame]);
        let t = tally.port(p);
        t.tx_frames += 1;
        t.tx_bytes += frame.len() as u64;
    }
    if let Some(c) = d.copy {
        let h = templates.get(&config.collector, c.next_hop).header(c.len);
        let t = tally.port(PortId::Collector);
        t.tx_frames += 1;
        t.tx_bytes += (h.as_bytes().len() + h.inner_len) as u64;
        tally.copies += 1;
        out[PortId::Collector.index()].push(&[h.as_bytes(), &frame[..h.inner_len]]);
    }
}

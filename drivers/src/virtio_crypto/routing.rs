//! Which CPU takes each queue's interrupt, and which data queue each CPU submits to: one map,
//! computed once per device, so that a completion wakes its task on the CPU that submitted it
//! wherever the device has enough queues.
//!
//! Data queues of all devices are numbered in one sequence (device 0's queues first); global
//! queue `g` interrupts CPU `g mod cpus`. A CPU submits to the queue of the device whose
//! interrupt comes to it; where the device has no such queue (fewer queues than CPUs), to queue
//! `cpu mod n`, and those completions are the only cross-CPU wake-ups.

use alloc::vec::Vec;

/// The CPU of each data queue's interrupt and the data queue of each CPU, for one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRouting {
    irq_cpu: Vec<usize>,
    queue_of_cpu: Vec<usize>,
    control_cpu: usize,
}

impl QueueRouting {
    /// The routing of a device with `data_queues` data queues (at least 1) whose first data
    /// queue is number `first_global_queue` across all devices, on a machine with `cpus` CPUs.
    pub fn new(first_global_queue: usize, data_queues: usize, cpus: usize) -> QueueRouting {
        let cpus = cpus.max(1);
        let data_queues = data_queues.max(1);
        let irq_cpu: Vec<usize> = (0..data_queues)
            .map(|q| (first_global_queue + q) % cpus)
            .collect();
        let queue_of_cpu = (0..cpus)
            .map(|cpu| {
                irq_cpu
                    .iter()
                    .position(|&c| c == cpu)
                    .unwrap_or(cpu % data_queues)
            })
            .collect();
        QueueRouting {
            control_cpu: irq_cpu[0],
            irq_cpu,
            queue_of_cpu,
        }
    }

    /// Every queue's interrupt on one CPU (one shared vector, or a shared INTx line).
    pub fn all_on(cpu: usize, data_queues: usize, cpus: usize) -> QueueRouting {
        let data_queues = data_queues.max(1);
        QueueRouting {
            irq_cpu: alloc::vec![cpu; data_queues],
            queue_of_cpu: (0..cpus.max(1)).map(|c| c % data_queues).collect(),
            control_cpu: cpu,
        }
    }

    /// The CPU that takes data queue `queue`'s interrupt.
    pub fn irq_cpu(&self, queue: usize) -> usize {
        self.irq_cpu[queue % self.irq_cpu.len()]
    }

    /// The CPU that takes the control queue's and the configuration interrupts.
    pub fn control_cpu(&self) -> usize {
        self.control_cpu
    }

    /// The data queue CPU `cpu` submits to.
    pub fn queue_for(&self, cpu: usize) -> usize {
        match self.queue_of_cpu.get(cpu) {
            Some(&queue) => queue,
            None => cpu % self.irq_cpu.len(),
        }
    }

    /// Whether CPU `cpu`'s completions come to `cpu` itself.
    pub fn is_local(&self, cpu: usize) -> bool {
        self.irq_cpu(self.queue_for(cpu)) == cpu
    }

    pub fn data_queues(&self) -> usize {
        self.irq_cpu.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cpu_submits_where_its_interrupts_arrive() {
        // Two devices with one queue each on two CPUs: device 0 -> CPU 0, device 1 -> CPU 1.
        let d0 = QueueRouting::new(0, 1, 2);
        let d1 = QueueRouting::new(1, 1, 2);
        assert_eq!((d0.irq_cpu(0), d1.irq_cpu(0)), (0, 1));
        assert!(d0.is_local(0) && !d0.is_local(1));
        assert!(d1.is_local(1) && !d1.is_local(0));
    }

    #[test]
    fn a_device_with_many_queues_gives_every_cpu_a_local_one() {
        for cpus in 1..=8 {
            let routing = QueueRouting::new(0, 8, cpus);
            for cpu in 0..cpus {
                assert!(routing.is_local(cpu), "{cpus} CPUs, CPU {cpu}");
                assert_eq!(routing.irq_cpu(routing.queue_for(cpu)), cpu);
            }
        }
    }

    #[test]
    fn fewer_queues_than_cpus_spread_by_cpu() {
        let routing = QueueRouting::new(0, 2, 4);
        assert_eq!(
            (0..4).map(|c| routing.queue_for(c)).collect::<Vec<_>>(),
            [0, 1, 0, 1]
        );
        assert_eq!(
            (0..4).map(|c| routing.is_local(c)).collect::<Vec<_>>(),
            [true, true, false, false]
        );
        // A CPU beyond the map still gets a queue.
        assert_eq!(routing.queue_for(9), 1);
    }

    #[test]
    fn all_on_one_cpu_routes_every_interrupt_there() {
        let routing = QueueRouting::all_on(1, 3, 4);
        assert_eq!(routing.control_cpu(), 1);
        assert!((0..3).all(|q| routing.irq_cpu(q) == 1));
        assert!(routing.is_local(1) && !routing.is_local(0));
    }
}

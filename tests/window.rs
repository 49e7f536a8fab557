//! The rolling window's hot path: adding a second (laid out for the head as it is written)
//! reuses the buffers allocated at construction.

use tspm_edge::window::{SecondInfo, Window};

use crate::util::alloc::allocations_during;

#[test]
fn window_push_allocates_nothing() {
    // Rows as long as the head's per-second part gives (16 x 512 + 14), split as the head's
    // parts read them.
    let mut window = Window::new(60, 60, 8_206, 8_206 - 5_120..8_206, 0..3_598);
    let row = vec![0.5f32; 8_206];
    // Fill the window and then keep it full (each push shifts it) for a while.
    let (allocs, ()) = allocations_during(|| {
        for index in 0..200 {
            let info = SecondInfo {
                index,
                audio: true,
                video: !index.is_multiple_of(3),
            };
            window.push(info, &row);
        }
    });
    assert_eq!(allocs, 0, "push allocated {allocs} times");
    assert_eq!(window.len(), 60);
    assert_eq!(window.index()[0], 140);
    assert_eq!(window.index()[59], 199);
    assert!(window.valid().iter().all(|&v| v == 1.0));
}

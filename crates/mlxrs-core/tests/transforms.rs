//! Function transformations, compile and export: `Closure`, `grad`,
//! `value_and_grad`, `vjp`, `jvp`, `vmap`, `compile`, `custom_vjp` /
//! `custom_function`, `checkpoint`, `export_function` / `import_function`,
//! and errors / panics of Rust closures coming back as `Err`.
//!
//! Golden values are derived by hand in the comments (sin / cos / tanh /
//! exp values as python's `math` module prints them, rounded to 8 digits).

#![allow(clippy::excessive_precision)] // golden values keep the digits python prints

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mlxrs_core::transforms::{
  self, Closure, CustomJvp, CustomVjp, CustomVmap, checkpoint, compile, compile_fn,
  custom_function, custom_vjp, grad, jvp, value_and_grad, vjp, vmap,
};
use mlxrs_core::{Array, Dtype, Error, Result, export, ops};

const TOL: f32 = 1e-5;

/// Held by the tests that change the global compile mode or count traces.
static COMPILE_MODE: Mutex<()> = Mutex::new(());

fn f32s(data: &[f32], shape: &[i32]) -> Array {
  Array::from_slice(data, shape).unwrap()
}

fn scalar(v: f32) -> Array {
  Array::scalar(v)
}

fn vals(a: &Array) -> Vec<f32> {
  a.clone().to_vec::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32]) {
  assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
  for (i, (g, w)) in got.iter().zip(want).enumerate() {
    assert!(
      (g - w).abs() <= TOL * w.abs().max(1.0),
      "index {i}: got {g}, want {w} (all: {got:?})"
    );
  }
}

/// `x -> [x * x]`.
fn square() -> Closure {
  Closure::new(|a: &[Array]| Ok(vec![ops::multiply(&a[0], &a[0])?])).unwrap()
}

/// `(x, y) -> [x * y + x * x]` (scalars).
fn xy_plus_xx() -> Closure {
  Closure::new(|a: &[Array]| {
    let (x, y) = (&a[0], &a[1]);
    Ok(vec![(&ops::multiply(x, y)? + &ops::multiply(x, x)?)?])
  })
  .unwrap()
}

fn sin_fn() -> Closure {
  Closure::new(|a: &[Array]| Ok(vec![ops::sin(&a[0])?])).unwrap()
}

// ------------------------------------------------------------------ closure

/// A closure is callable directly: `x^2` at `[1, 2, 3]` is `[1, 4, 9]`.
#[test]
fn closure_call() {
  let out = square().call(&[f32s(&[1.0, 2.0, 3.0], &[3])]).unwrap();
  assert_eq!(out.len(), 1);
  assert_eq!(vals(&out[0]), [1.0, 4.0, 9.0]);
}

/// A closure (and a transform of it) moves to another thread and runs there.
#[test]
fn closure_is_send() {
  let g = grad(&square(), &[0]).unwrap();
  let out = std::thread::spawn(move || {
    let x = scalar(4.0);
    vals(&g.call(&[x]).unwrap()[0])
  })
  .join()
  .unwrap();
  // d/dx x^2 = 2x = 8 at 4.
  assert_eq!(out, [8.0]);
}

// ------------------------------------------------------------------ grad

/// d/dx x^2 = 2x: 6 at x = 3.
#[test]
fn grad_of_square_at_3() {
  let g = grad(&square(), &[0]).unwrap();
  let out = g.call(&[scalar(3.0)]).unwrap();
  assert_eq!(out.len(), 1);
  assert_eq!(vals(&out[0]), [6.0]);
}

/// Second derivative: d²/dx² x^3 = 6x = 12 at x = 2.
#[test]
fn grad_of_grad() {
  let cube = Closure::new(|a: &[Array]| {
    let x = &a[0];
    Ok(vec![ops::multiply(&ops::multiply(x, x)?, x)?])
  })
  .unwrap();
  let g2 = grad(&grad(&cube, &[0]).unwrap(), &[0]).unwrap();
  assert_eq!(vals(&g2.call(&[scalar(2.0)]).unwrap()[0]), [12.0]);
}

/// f(x, y) = x y + x^2 at (2, 5): value 10 + 4 = 14; df/dx = y + 2x = 9,
/// df/dy = x = 2. argnums `[1]` gives `[2]`, `[0, 1]` gives `[9, 2]`, `[-1]`
/// (the last input) gives `[2]`.
#[test]
fn value_and_grad_argnums() {
  let f = xy_plus_xx();
  let args = [scalar(2.0), scalar(5.0)];

  let (values, grads) = value_and_grad(&f, &[1]).unwrap().call(&args).unwrap();
  assert_eq!(values.len(), 1);
  assert_eq!(vals(&values[0]), [14.0]);
  assert_eq!(grads.len(), 1);
  assert_eq!(vals(&grads[0]), [2.0]);

  let (values, grads) = value_and_grad(&f, &[0, 1]).unwrap().call(&args).unwrap();
  assert_eq!(vals(&values[0]), [14.0]);
  assert_eq!(
    grads.iter().map(|g| vals(g)[0]).collect::<Vec<_>>(),
    [9.0, 2.0]
  );

  let grads = grad(&f, &[-1]).unwrap().call(&args).unwrap();
  assert_eq!(vals(&grads[0]), [2.0]);
}

/// Bad argnums: none at all (at creation), out of range, repeated (at the
/// call, when the number of inputs is known) are all `Err`.
#[test]
fn wrong_argnums_is_err() {
  let f = xy_plus_xx();
  let args = [scalar(2.0), scalar(5.0)];
  let e = value_and_grad(&f, &[]).unwrap_err();
  assert!(e.to_string().contains("at least one argument"), "{e}");

  let e = grad(&f, &[2]).unwrap().call(&args).unwrap_err();
  assert!(e.to_string().contains("Invalid argument number"), "{e}");
  let e = grad(&f, &[-3]).unwrap().call(&args).unwrap_err();
  assert!(e.to_string().contains("Invalid argument number"), "{e}");
  let e = grad(&f, &[0, 0]).unwrap().call(&args).unwrap_err();
  assert!(e.to_string().contains("Repeat argument"), "{e}");

  // The same transform still works with good inputs afterwards.
  assert_eq!(
    vals(&grad(&f, &[0]).unwrap().call(&args).unwrap()[0]),
    [9.0]
  );
}

/// grad needs a scalar output: a vector output is an `Err`.
#[test]
fn grad_of_non_scalar_is_err() {
  let e = grad(&square(), &[0])
    .unwrap()
    .call(&[f32s(&[1.0, 2.0], &[2])])
    .unwrap_err();
  assert!(
    e.to_string().contains("does not match cotangent shape"),
    "{e}"
  );
}

// ------------------------------------------------------------------ vjp / jvp

/// sin at x = [0, 0.5, 1]: outputs sin(x) = [0, 0.47942554, 0.84147098];
/// vjp with cotangents c = [1, 2, 3] is c cos(x) =
/// [1, 2 * 0.87758256, 3 * 0.54030231] = [1, 1.7551651, 1.6209069].
#[test]
fn vjp_of_sin() {
  let x = f32s(&[0.0, 0.5, 1.0], &[3]);
  let c = f32s(&[1.0, 2.0, 3.0], &[3]);
  let (outs, vjps) = vjp(&sin_fn(), &[x], &[c]).unwrap();
  assert_close(&vals(&outs[0]), &[0.0, 0.479_425_54, 0.841_470_98]);
  assert_eq!(vjps.len(), 1);
  assert_close(&vals(&vjps[0]), &[1.0, 1.755_165_1, 1.620_906_9]);
}

/// jvp of sin with tangents of ones is cos(x) = [1, 0.87758256, 0.54030231].
#[test]
fn jvp_of_sin() {
  let x = f32s(&[0.0, 0.5, 1.0], &[3]);
  let t = f32s(&[1.0, 1.0, 1.0], &[3]);
  let (outs, jvps) = jvp(&sin_fn(), &[x], &[t]).unwrap();
  assert_close(&vals(&outs[0]), &[0.0, 0.479_425_54, 0.841_470_98]);
  assert_close(&vals(&jvps[0]), &[1.0, 0.877_582_56, 0.540_302_31]);
}

/// Mismatched tangent / cotangent counts and shapes are `Err`.
#[test]
fn vjp_jvp_bad_shapes_are_err() {
  let x = f32s(&[0.0, 0.5, 1.0], &[3]);
  assert!(jvp(&sin_fn(), std::slice::from_ref(&x), &[]).is_err());
  assert!(jvp(&sin_fn(), std::slice::from_ref(&x), &[f32s(&[1.0], &[1])]).is_err());
  assert!(
    vjp(
      &sin_fn(),
      std::slice::from_ref(&x),
      &[f32s(&[1.0, 2.0], &[2])]
    )
    .is_err()
  );
  assert!(vjp(&sin_fn(), &[x], &[]).is_err());
}

// ------------------------------------------------------------------ vmap

/// `dot(a, b) = sum(a * b)` of vectors, vmapped over a batch:
/// a = [[1, 2, 3], [4, 5, 6]], b = [[1, 0, 1], [2, 2, 2]] gives
/// [1 + 3, 2 * (4 + 5 + 6)] = [4, 30]; with `b` not mapped (in axis -1) and
/// b = [1, 1, 1]: the row sums [6, 15]; mapping `a` over axis 1 (its
/// columns [1, 4], [2, 5], [3, 6]) against b = [1, 2]: [9, 12, 15].
#[test]
fn vmap_dot_over_batch() {
  let dot =
    Closure::new(|a: &[Array]| Ok(vec![ops::sum(&ops::multiply(&a[0], &a[1])?, false)?])).unwrap();
  let a = f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
  let b = f32s(&[1.0, 0.0, 1.0, 2.0, 2.0, 2.0], &[2, 3]);

  let out = vmap(&dot, &[], &[]).unwrap().call(&[a.clone(), b]).unwrap();
  assert_eq!(out[0].shape(), [2]);
  assert_eq!(vals(&out[0]), [4.0, 30.0]);

  let ones = f32s(&[1.0, 1.0, 1.0], &[3]);
  let out = vmap(&dot, &[0, -1], &[0])
    .unwrap()
    .call(&[a.clone(), ones])
    .unwrap();
  assert_eq!(vals(&out[0]), [6.0, 15.0]);

  let out = vmap(&dot, &[1, -1], &[0])
    .unwrap()
    .call(&[a, f32s(&[1.0, 2.0], &[2])])
    .unwrap();
  assert_eq!(vals(&out[0]), [9.0, 12.0, 15.0]);
}

/// In axes that are out of range (or negative other than -1), and in-axis
/// counts that do not match the inputs, are `Err`.
#[test]
fn vmap_bad_axes_are_err() {
  let f = sin_fn();
  let a = f32s(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
  for axes in [&[2][..], &[-2], &[0, 0]] {
    // MLX rejects some at creation (all-negative in axes with explicit out
    // axes), the rest fail at the call.
    let e = vmap(&f, axes, &[0])
      .and_then(|v| v.call(std::slice::from_ref(&a)))
      .unwrap_err();
    assert!(e.to_string().contains("vmap"), "{axes:?}: {e}");
  }
  let e = vmap(&f, &[-2, 0], &[0])
    .unwrap()
    .call(&[a.clone(), a.clone()])
    .unwrap_err();
  assert!(e.to_string().contains("in axis -2"), "{e}");
  // Output axis beyond the output's rank.
  let e = vmap(&f, &[0], &[3])
    .unwrap()
    .call(std::slice::from_ref(&a))
    .unwrap_err();
  assert!(e.to_string().contains("vmap"), "{e}");
  // A scalar cannot be mapped.
  assert!(vmap(&f, &[], &[]).unwrap().call(&[scalar(1.0)]).is_err());
}

// ------------------------------------------------------------------ compile

/// `f(x, y) = exp(x) * y + sin(x)`, compiled (fused elementwise kernel),
/// matches the plain closure on the same inputs, for two input shapes.
#[test]
fn compile_matches_uncompiled() {
  let f = Closure::new(|a: &[Array]| {
    let (x, y) = (&a[0], &a[1]);
    Ok(vec![(&ops::multiply(&ops::exp(x)?, y)? + &ops::sin(x)?)?])
  })
  .unwrap();
  let cf = compile(&f, false).unwrap();
  for n in [5usize, 64] {
    let xs: Vec<f32> = (0..n).map(|i| -1.0 + 2.0 * i as f32 / n as f32).collect();
    let ys: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let (x, y) = (f32s(&xs, &[n as i32]), f32s(&ys, &[n as i32]));
    let want = vals(&f.call(&[x.clone(), y.clone()]).unwrap()[0]);
    let got = vals(&cf.call(&[x, y]).unwrap()[0]);
    assert_eq!(got.len(), n);
    for (g, w) in got.iter().zip(&want) {
      // Fused kernels may contract a multiply-add: allow 1 ulp-ish.
      assert!(
        (g - w).abs() <= 1e-6 * w.abs().max(1.0),
        "{got:?} vs {want:?}"
      );
    }
  }
}

/// A compiled closure traces once per input signature: after warming up
/// on shape [3], shape [5] (same rank and dtype) needs a new trace, but not
/// with `shapeless`, which then computes `2x + 1` correctly for both; a
/// signature already seen is never traced again. (MLX 0.32 retraces the
/// very first compiled function of a process once more on its second
/// call, hence the warm-up calls before counting.)
#[test]
fn shapeless_compile_handles_two_shapes() {
  let _mode = COMPILE_MODE.lock().unwrap_or_else(|e| e.into_inner());
  let mk = |traces: Arc<AtomicUsize>| {
    Closure::new(move |a: &[Array]| {
      traces.fetch_add(1, Ordering::SeqCst);
      Ok(vec![(&(&a[0] * 2.0)? + 1.0)?])
    })
    .unwrap()
  };
  let x3 = f32s(&[0.0, 1.0, 2.0], &[3]);
  let x5 = f32s(&[0.0, 1.0, 2.0, 3.0, 4.0], &[5]);
  let run = |f: &Closure, x: &Array| {
    let y = f.call(std::slice::from_ref(x)).unwrap().remove(0);
    vals(&y)
  };

  for shapeless in [false, true] {
    let traces = Arc::new(AtomicUsize::new(0));
    let cf = compile(&mk(traces.clone()), shapeless).unwrap();
    for _ in 0..3 {
      assert_eq!(run(&cf, &x3), [1.0, 3.0, 5.0]);
    }
    let warm = traces.load(Ordering::SeqCst);
    assert!(warm >= 1);
    assert_eq!(run(&cf, &x3), [1.0, 3.0, 5.0]);
    assert_eq!(
      traces.load(Ordering::SeqCst),
      warm,
      "shapeless {shapeless}: same shape"
    );
    assert_eq!(run(&cf, &x5), [1.0, 3.0, 5.0, 7.0, 9.0]);
    let after = traces.load(Ordering::SeqCst);
    if shapeless {
      assert_eq!(after, warm, "shapeless: a new shape needs no trace");
    } else {
      assert!(after > warm, "shaped: a new shape is traced");
    }
    for _ in 0..2 {
      assert_eq!(run(&cf, &x5), [1.0, 3.0, 5.0, 7.0, 9.0]);
      assert_eq!(run(&cf, &x3), [1.0, 3.0, 5.0]);
    }
    assert_eq!(
      traces.load(Ordering::SeqCst),
      after,
      "shapeless {shapeless}: no more traces"
    );
  }
}

/// `compile_fn` with captured weights and a state passed through (a decode
/// step): h' = tanh(x W + h) with W = 0.5 I (2x2), x = [1, 2], h0 = 0:
/// h1 = tanh([0.5, 1]) = [0.46211716, 0.76159416], h2 = tanh([0.5, 1] + h1)
/// = tanh([0.96211716, 1.76159416]) = [0.74521974, 0.94268079] (python
/// `math.tanh`).
#[test]
fn compile_fn_decode_step() {
  let w = f32s(&[0.5, 0.0, 0.0, 0.5], &[2, 2]);
  let step = compile_fn(
    move |a: &[Array]| {
      let h = ops::tanh(&(&ops::matmul(&a[0], &w)? + &a[1])?)?;
      Ok(vec![h])
    },
    false,
  )
  .unwrap();
  let x = f32s(&[1.0, 2.0], &[1, 2]);
  let mut h = Array::zeros(&[1, 2], Dtype::Float32).unwrap();
  let mut seen = Vec::new();
  for _ in 0..2 {
    h = step.call(&[x.clone(), h]).unwrap().remove(0);
    transforms::eval(std::slice::from_ref(&h)).unwrap();
    seen.push(vals(&h));
  }
  assert_close(&seen[0], &[0.462_117_16, 0.761_594_16]);
  assert_close(&seen[1], &[0.745_219_74, 0.942_680_79]);
}

/// Compile disabled globally: the compiled closure just calls the function
/// (traced on every call); enabling restores caching.
#[test]
fn compile_mode_switches() {
  // The mode is global: tests counting traces hold the same lock.
  let _mode = COMPILE_MODE.lock().unwrap_or_else(|e| e.into_inner());
  let traces = Arc::new(AtomicUsize::new(0));
  let t = traces.clone();
  let f = Closure::new(move |a: &[Array]| {
    t.fetch_add(1, Ordering::SeqCst);
    Ok(vec![(&a[0] + 1.0)?])
  })
  .unwrap();
  transforms::disable_compile().unwrap();
  let cf = compile(&f, false).unwrap();
  transforms::enable_compile().unwrap();
  cf.call(&[scalar(1.0)]).unwrap();
  cf.call(&[scalar(1.0)]).unwrap();
  assert_eq!(traces.load(Ordering::SeqCst), 2);
  transforms::set_compile_mode(transforms::CompileMode::Enabled).unwrap();
}

// ------------------------------------------------------------------ custom

/// `custom_vjp(sin, vjp = 10 * cotangent)`: the forward value is still
/// sin(0.5) = 0.47942554, but the gradient is 10 (not cos(0.5)).
#[test]
fn custom_vjp_overrides_gradient() {
  let f = custom_vjp(
    &sin_fn(),
    |_primals: &[Array], cotangents: &[Array], _outputs: &[Array]| {
      Ok(vec![(&cotangents[0] * 10.0)?])
    },
  )
  .unwrap();
  assert_close(&vals(&f.call(&[scalar(0.5)]).unwrap()[0]), &[0.479_425_54]);
  let g = grad(&f, &[0]).unwrap().call(&[scalar(0.5)]).unwrap();
  assert_eq!(vals(&g[0]), [10.0]);
}

/// A custom vjp returning the wrong number of cotangents is an `Err`, not
/// an out-of-range read inside MLX.
#[test]
fn custom_vjp_wrong_count_is_err() {
  let f = custom_vjp(&xy_plus_xx(), |_p: &[Array], c: &[Array], _o: &[Array]| {
    Ok(vec![c[0].clone()])
  })
  .unwrap();
  let e = grad(&f, &[1])
    .unwrap()
    .call(&[scalar(2.0), scalar(5.0)])
    .unwrap_err();
  assert!(
    e.to_string()
      .contains("vjp function returned 1 arrays for 2 primals"),
    "{e}"
  );
}

/// `custom_function` with a jvp (3 * tangent) and a vmap (sin, then + 100,
/// out axis 0): jvp of the function is 3 t; vmapping it over [[0], [0]]
/// uses the custom vmap: sin(0) + 100 = 100 per row.
#[test]
fn custom_function_jvp_and_vmap() {
  let cjvp = CustomJvp::new(|_p: &[Array], t: &[Array], argnums: &[i32]| {
    assert_eq!(argnums, [0]);
    Ok(vec![(&t[0] * 3.0)?])
  })
  .unwrap();
  let cvmap = CustomVmap::new(|inputs: &[Array], axes: &[i32]| {
    Ok((vec![(&ops::sin(&inputs[0])? + 100.0)?], vec![axes[0]]))
  })
  .unwrap();
  let f = custom_function(&sin_fn(), None, Some(&cjvp), Some(&cvmap)).unwrap();

  let (outs, jvps) = jvp(&f, &[scalar(0.5)], &[scalar(2.0)]).unwrap();
  assert_close(&vals(&outs[0]), &[0.479_425_54]);
  assert_eq!(vals(&jvps[0]), [6.0]);

  let out = vmap(&f, &[0], &[0])
    .unwrap()
    .call(&[f32s(&[0.0, 0.0], &[2, 1])])
    .unwrap();
  assert_eq!(vals(&out[0]), [100.0, 100.0]);
}

/// A custom jvp returning two tangents for a one-output function is `Err`.
#[test]
fn custom_jvp_wrong_count_is_err() {
  let cjvp =
    CustomJvp::new(|_p: &[Array], t: &[Array], _a: &[i32]| Ok(vec![t[0].clone(), t[0].clone()]))
      .unwrap();
  let f = custom_function(&sin_fn(), None, Some(&cjvp), None).unwrap();
  let e = jvp(&f, &[scalar(0.5)], &[scalar(1.0)]).unwrap_err();
  assert!(
    e.to_string().contains("jvp function returned 2 arrays"),
    "{e}"
  );
}

/// A custom function whose forward returns nothing is `Err` (MLX would read
/// `outputs[0]`).
#[test]
fn custom_function_empty_output_is_err() {
  let empty = Closure::new(|_: &[Array]| Ok(vec![])).unwrap();
  let cvjp = CustomVjp::new(|p: &[Array], _c: &[Array], _o: &[Array]| Ok(p.to_vec())).unwrap();
  let f = custom_function(&empty, Some(&cvjp), None, None).unwrap();
  let e = f.call(&[scalar(1.0)]).unwrap_err();
  assert!(e.to_string().contains("at least one array"), "{e}");
  let e = checkpoint(&empty)
    .unwrap()
    .call(&[scalar(1.0)])
    .unwrap_err();
  assert!(e.to_string().contains("at least one array"), "{e}");
}

/// checkpoint leaves values and gradients unchanged:
/// f(x) = sum(exp(sin(x)) * x), grad = exp(sin x) (x cos x + 1).
#[test]
fn checkpoint_matches_plain_grad() {
  let f = Closure::new(|a: &[Array]| {
    let x = &a[0];
    Ok(vec![ops::sum(
      &ops::multiply(&ops::exp(&ops::sin(x)?)?, x)?,
      false,
    )?])
  })
  .unwrap();
  let x = f32s(&[-1.0, 0.0, 0.5, 2.0], &[4]);
  let plain = grad(&f, &[0])
    .unwrap()
    .call(std::slice::from_ref(&x))
    .unwrap();
  let ck = checkpoint(&f).unwrap();
  let ckg = grad(&ck, &[0])
    .unwrap()
    .call(std::slice::from_ref(&x))
    .unwrap();
  assert_close(&vals(&ckg[0]), &vals(&plain[0]));
  // At x = 0: exp(0) (0 + 1) = 1.
  assert_close(&vals(&ckg[0])[1..2], &[1.0]);
  assert_close(
    &vals(&ck.call(std::slice::from_ref(&x)).unwrap()[0]),
    &vals(&f.call(&[x]).unwrap()[0]),
  );
}

// ------------------------------------------------------------------ export

/// Export `(x, y) -> [x * w + y, sum(x)]` (w = [1, 2, 3] captured) traced at
/// shape [3]; the import computes the same on new inputs of that shape:
/// x = [1, 1, 2], y = [10, 20, 30] gives [11, 22, 36] and 4. Another shape
/// is an `Err` naming the exported signature.
#[test]
fn export_import_round_trip() {
  let dir = tempdir("export");
  let path = dir.join("f.mlxfn");
  let w = f32s(&[1.0, 2.0, 3.0], &[3]);
  let f = Closure::new(move |a: &[Array]| {
    Ok(vec![
      (&ops::multiply(&a[0], &w)? + &a[1])?,
      ops::sum(&a[0], false)?,
    ])
  })
  .unwrap();
  let ex = [f32s(&[0.0; 3], &[3]), f32s(&[0.0; 3], &[3])];
  export::export_function(&path, &f, &ex, false).unwrap();

  let g = export::import_function(&path).unwrap();
  let args = [
    f32s(&[1.0, 1.0, 2.0], &[3]),
    f32s(&[10.0, 20.0, 30.0], &[3]),
  ];
  let want = f.call(&args).unwrap();
  let got = g.call(&args).unwrap();
  assert_eq!(got.len(), 2);
  assert_eq!(vals(&got[0]), [11.0, 22.0, 36.0]);
  assert_eq!(vals(&got[1]), [4.0]);
  assert_eq!(vals(&got[0]), vals(&want[0]));

  // The imported closure composes with the transforms: d/dx sum(x) = 1.
  let sum_x = Closure::new({
    let g = g.clone();
    move |a: &[Array]| Ok(vec![g.call(a)?.remove(1)])
  })
  .unwrap();
  assert_eq!(
    vals(&grad(&sum_x, &[0]).unwrap().call(&args).unwrap()[0]),
    [1.0, 1.0, 1.0]
  );

  let e = g
    .call(&[f32s(&[1.0; 4], &[4]), f32s(&[1.0; 4], &[4])])
    .unwrap_err();
  assert!(e.to_string().contains("No imported function found"), "{e}");

  let e = export::import_function(dir.join("missing.mlxfn")).unwrap_err();
  assert!(matches!(e, Error::Io { .. }), "{e}");
  std::fs::remove_dir_all(&dir).ok();
}

/// One file, several traces (python `mx.exporter`): 1 and 2 inputs.
#[test]
fn exporter_multiple_traces() {
  let dir = tempdir("exporter");
  let path = dir.join("sum.mlxfn");
  let f = Closure::new(|a: &[Array]| {
    let mut acc = a[0].clone();
    for x in &a[1..] {
      acc = (&acc + x)?;
    }
    Ok(vec![acc])
  })
  .unwrap();
  {
    let mut ex = export::FunctionExporter::new(&path, &f, true).unwrap();
    let x = f32s(&[1.0], &[1]);
    ex.trace(std::slice::from_ref(&x)).unwrap();
    ex.trace(&[x.clone(), x.clone()]).unwrap();
    // The same signature twice is an error.
    assert!(ex.trace(&[x]).is_err());
  }
  let g = export::import_function(&path).unwrap();
  let a = f32s(&[1.0, 2.0, 3.0], &[3]);
  let b = f32s(&[10.0, 20.0, 30.0], &[3]);
  assert_eq!(
    vals(&g.call(std::slice::from_ref(&a)).unwrap()[0]),
    [1.0, 2.0, 3.0]
  );
  assert_eq!(vals(&g.call(&[a, b]).unwrap()[0]), [11.0, 22.0, 33.0]);
  std::fs::remove_dir_all(&dir).ok();
}

/// An imported closure works on whichever thread calls it (MLX 0.32 binds
/// imported ops to the process's first stream; mlxrs rebinds them to the
/// calling thread's): import on one thread, call there and on two others.
/// `x -> [exp(x) * 2]` at [0, 1] is [2, 2e] = [2, 5.4365637].
#[test]
fn imported_closure_on_other_threads() {
  let dir = tempdir("threads");
  let path = dir.join("f.mlxfn");
  let two = scalar(2.0);
  let f =
    Closure::new(move |a: &[Array]| Ok(vec![ops::multiply(&ops::exp(&a[0])?, &two)?])).unwrap();
  export::export_function(&path, &f, &[f32s(&[0.0, 0.0], &[2])], false).unwrap();
  let want = [2.0, 5.436_563_7];
  let g = std::thread::spawn(move || {
    let g = export::import_function(&path).unwrap();
    assert_close(
      &vals(&g.call(&[f32s(&[0.0, 1.0], &[2])]).unwrap()[0]),
      &want,
    );
    g
  })
  .join()
  .unwrap();
  for _ in 0..2 {
    let g = g.clone();
    std::thread::spawn(move || {
      for _ in 0..2 {
        assert_close(
          &vals(&g.call(&[f32s(&[0.0, 1.0], &[2])]).unwrap()[0]),
          &want,
        );
      }
    })
    .join()
    .unwrap();
  }
  assert_close(
    &vals(&g.call(&[f32s(&[0.0, 1.0], &[2])]).unwrap()[0]),
    &want,
  );
  std::fs::remove_dir_all(&dir).ok();
}

/// The dot and text graphs of `sin(x) + x` mention the ops.
#[test]
fn graph_printing() {
  let x = f32s(&[1.0, 2.0], &[2]);
  let y = (&ops::sin(&x).unwrap() + &x).unwrap();
  let dot = export::export_to_dot(std::slice::from_ref(&y)).unwrap();
  assert!(dot.starts_with("digraph"), "{dot}");
  assert!(dot.contains("Sin") && dot.contains("Add"), "{dot}");
  let text = export::print_graph(&[y]).unwrap();
  assert!(text.contains("Sin") && text.contains("Add"), "{text}");
}

fn tempdir(tag: &str) -> std::path::PathBuf {
  let d = std::env::temp_dir().join(format!("mlxrs-transforms-{tag}-{}", std::process::id()));
  std::fs::create_dir_all(&d).unwrap();
  d
}

// ------------------------------------------------------------------ errors

/// A closure returning `Err` gives back that same error (variant and
/// message) from a direct call and through grad / vmap / compile.
#[test]
fn closure_err_comes_back() {
  let bad = Closure::new(|_: &[Array]| -> Result<Vec<Array>> {
    Err(Error::InvalidArgument("nope".into()))
  })
  .unwrap();
  let x = scalar(1.0);
  for (what, r) in [
    ("call", bad.call(std::slice::from_ref(&x))),
    (
      "grad",
      grad(&bad, &[0]).unwrap().call(std::slice::from_ref(&x)),
    ),
    (
      "vmap",
      vmap(&bad, &[], &[]).unwrap().call(&[f32s(&[1.0], &[1])]),
    ),
    (
      "compile",
      compile(&bad, false).unwrap().call(std::slice::from_ref(&x)),
    ),
    (
      "vjp",
      vjp(&bad, std::slice::from_ref(&x), std::slice::from_ref(&x)).map(|p| p.0),
    ),
  ] {
    match r {
      Err(Error::InvalidArgument(m)) => assert_eq!(m, "nope", "{what}"),
      other => panic!("{what}: expected the closure's error, got {other:?}"),
    }
  }
  // Everything still works afterwards.
  assert_eq!(
    vals(&grad(&square(), &[0]).unwrap().call(&[scalar(3.0)]).unwrap()[0]),
    [6.0]
  );
}

/// An MLX error inside the closure (a shape mismatch) comes back as that
/// MLX error, not doubly wrapped.
#[test]
fn mlx_error_inside_closure() {
  let f = Closure::new(|a: &[Array]| Ok(vec![ops::matmul(&a[0], &a[0])?])).unwrap();
  let e = f
    .call(&[f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])])
    .unwrap_err();
  match e {
    Error::Mlx(m) => assert!(!m.starts_with("mlx:") && m.contains("matmul"), "{m}"),
    other => panic!("{other:?}"),
  }
}

/// A panicking closure: `Err` mentioning the panic, from a direct call and
/// through grad and compile; the closure, MLX and the process keep working.
#[test]
fn closure_panic_is_err() {
  let calls = Arc::new(AtomicUsize::new(0));
  let c = calls.clone();
  let boom = Closure::new(move |a: &[Array]| {
    if c.fetch_add(1, Ordering::SeqCst) < 3 {
      panic!("boom {}", 42);
    }
    Ok(vec![(&a[0] + 1.0)?])
  })
  .unwrap();
  let x = scalar(1.0);
  for r in [
    boom.call(std::slice::from_ref(&x)),
    grad(&boom, &[0]).unwrap().call(std::slice::from_ref(&x)),
    compile(&boom, false)
      .unwrap()
      .call(std::slice::from_ref(&x)),
  ] {
    let e = r.unwrap_err();
    assert!(e.to_string().contains("panicked: boom 42"), "{e}");
  }
  // The fourth call no longer panics: the same closure works.
  assert_eq!(vals(&boom.call(&[x]).unwrap()[0]), [2.0]);
  assert_eq!(vals(&square().call(&[scalar(3.0)]).unwrap()[0]), [9.0]);
}

/// A compiled closure whose first trace fails re-traces cleanly on the next
/// call (MLX unwound its compile state when the callback's error was
/// thrown).
#[test]
fn compile_after_failed_trace() {
  let fail = Arc::new(AtomicBool::new(true));
  let f = {
    let fail = fail.clone();
    Closure::new(move |a: &[Array]| {
      if fail.load(Ordering::SeqCst) {
        return Err(Error::InvalidArgument("first trace fails".into()));
      }
      Ok(vec![(&a[0] * 3.0)?])
    })
    .unwrap()
  };
  let cf = compile(&f, false).unwrap();
  let x = f32s(&[1.0, 2.0], &[2]);
  assert!(cf.call(std::slice::from_ref(&x)).is_err());
  fail.store(false, Ordering::SeqCst);
  assert_eq!(vals(&cf.call(&[x]).unwrap()[0]), [3.0, 6.0]);
}

/// A custom vjp that fails surfaces through grad.
#[test]
fn custom_vjp_err_comes_back() {
  let f = custom_vjp(
    &sin_fn(),
    |_p: &[Array], _c: &[Array], _o: &[Array]| -> Result<Vec<Array>> {
      Err(Error::InvalidArgument("vjp says no".into()))
    },
  )
  .unwrap();
  let e = grad(&f, &[0]).unwrap().call(&[scalar(0.5)]).unwrap_err();
  assert!(
    matches!(&e, Error::InvalidArgument(m) if m == "vjp says no"),
    "{e:?}"
  );
}

/// Payloads are freed: a closure's captured state is dropped once the
/// closure and everything derived from it are gone.
#[test]
fn payload_is_dropped() {
  struct Flag(Arc<AtomicBool>);
  impl Drop for Flag {
    fn drop(&mut self) {
      self.0.store(true, Ordering::SeqCst);
    }
  }
  let dropped = Arc::new(AtomicBool::new(false));
  {
    let flag = Flag(dropped.clone());
    let f = Closure::new(move |a: &[Array]| {
      let _keep = &flag;
      Ok(vec![a[0].clone()])
    })
    .unwrap();
    let cf = compile(&grad(&f, &[0]).unwrap(), false).unwrap();
    drop(f);
    assert!(!dropped.load(Ordering::SeqCst));
    cf.call(&[scalar(1.0)]).unwrap();
  }
  assert!(dropped.load(Ordering::SeqCst));
}

// ------------------------------------------------------------------ bench

/// Timing of a tiny MLP step, plain vs compiled (CPU). Not an assertion:
/// `cargo test -p mlxrs-core --test transforms -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_compile_mlp_step() {
  for &(batch, d, hidden) in &[(1, 64, 256), (1, 256, 1024), (16, 512, 2048)] {
    let w1 = mlxrs_core::random::normal(&[d, hidden], Dtype::Float32, 0.0, 0.05, None).unwrap();
    let w2 = mlxrs_core::random::normal(&[hidden, d], Dtype::Float32, 0.0, 0.05, None).unwrap();
    let g = Array::ones(&[d], Dtype::Float32).unwrap();
    transforms::eval(&[w1.clone(), w2.clone(), g.clone()]).unwrap();
    // RMSNorm -> up -> SiLU -> down -> residual: the elementwise tail is
    // what compile fuses.
    let step = move |a: &[Array]| -> Result<Vec<Array>> {
      let x = &a[0];
      let ms = ops::mean_axes(&ops::multiply(x, x)?, &[-1], true)?;
      let n = ops::multiply(&ops::multiply(x, &ops::rsqrt(&(&ms + 1e-5)?)?)?, &g)?;
      let h = ops::matmul(&n, &w1)?;
      let h = ops::multiply(&h, &ops::sigmoid(&h)?)?;
      let y = (&ops::matmul(&h, &w2)? + x)?;
      Ok(vec![ops::tanh(&y)?])
    };
    let plain = Closure::new(step).unwrap();
    let compiled = compile(&plain, false).unwrap();
    let x0 = mlxrs_core::random::normal(&[batch, d], Dtype::Float32, 0.0, 1.0, None).unwrap();
    // Best of 7 rounds of 200 steps, plain and compiled interleaved (the
    // machine may be shared: the minimum is the least disturbed round).
    let round = |f: &Closure, x: &mut Array| {
      let t = std::time::Instant::now();
      for _ in 0..200 {
        *x = f.call(std::slice::from_ref(x)).unwrap().remove(0);
        transforms::eval(std::slice::from_ref(x)).unwrap();
      }
      t.elapsed().as_secs_f64() / 200.0 * 1e6
    };
    let (mut xp, mut xc) = (x0.clone(), x0.clone());
    round(&plain, &mut xp);
    round(&compiled, &mut xc);
    let (mut tp, mut tc) = (f64::MAX, f64::MAX);
    for _ in 0..7 {
      tp = tp.min(round(&plain, &mut xp));
      tc = tc.min(round(&compiled, &mut xc));
    }
    println!(
      "mlp step batch {batch} d {d} hidden {hidden}: plain {tp:.1} us, compiled {tc:.1} us, \
       speedup {:.2}x",
      tp / tc
    );
  }
}

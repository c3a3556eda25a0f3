//! The C++ -> C -> Rust type mapping of generated bindings.

/// How one C++ parameter crosses the C boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
  /// `array`, `const array&` -> `const mlx_array` / `&Array`.
  Array,
  /// `std::optional<array>` -> `const mlx_array` (NULL ctx = absent) /
  /// `Option<&Array>`.
  OptArray,
  /// `std::vector<array>` -> `const mlx_vector_array` / `&[Array]`.
  Arrays,
  /// `Shape` -> `const int* x, size_t x_num` / `&[i32]`.
  Shape,
  /// `std::vector<int>` -> `const int* x, size_t x_num` / `&[i32]`.
  Ints,
  /// `std::optional<std::vector<int>>` -> `const int* x, size_t x_num`
  /// (NULL pointer = absent) / `Option<&[i32]>`.
  OptInts,
  /// `Strides` -> `const int64_t* x, size_t x_num` / `&[i64]`.
  Strides,
  Int,
  Float,
  Double,
  Bool,
  Size,
  U64,
  /// `Dtype` -> `mlx_dtype` / `Dtype`.
  Dtype,
  /// `std::optional<int>` -> `mlx_optional_int` / `Option<i32>`.
  OptInt,
  /// `std::optional<float>` -> `mlx_optional_float` / `Option<f32>`.
  OptFloat,
  /// `std::optional<Dtype>` -> `mlx_optional_dtype` / `Option<Dtype>`.
  OptDtype,
  /// `std::optional<bool>` -> `mlx_optional_bool` / `Option<bool>`.
  OptBool,
  /// `std::string` -> `const char*` / `&str`.
  Str,
  /// `std::pair<int, int>` -> `int x_0, int x_1` / `(i32, i32)`.
  Int2,
  /// `std::tuple<int, int, int>` -> `int x_0, x_1, x_2` / `(i32, i32, i32)`.
  Int3,
  /// `fft::FFTNorm` -> `mlx_fft_norm` / `FftNorm`.
  FftNorm,
  /// `StreamOrDevice` -> `const mlx_stream s` (NULL ctx = default).
  Stream,
}

/// How a C++ result crosses the C boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
  /// `array` -> `mlx_array* res` / `Array`.
  Array,
  /// `std::vector<array>` -> `mlx_vector_array* res` / `Vec<Array>`.
  Arrays,
  /// `std::pair<array, array>` / `std::tuple<array, array>` ->
  /// `mlx_array* res_0, mlx_array* res_1` / `(Array, Array)`.
  Pair,
  /// `void` -> nothing / `()`.
  Void,
}

/// `const T&` / `const T` -> `T`.
fn bare(ty: &str) -> &str {
  let t = ty.strip_prefix("const ").unwrap_or(ty);
  t.strip_suffix('&').unwrap_or(t).trim()
}

/// The kind of a (normalized) C++ parameter type, or `None` when it has no
/// C mapping.
pub fn kind(ty: &str) -> Option<Kind> {
  Some(match bare(ty) {
    "array" => Kind::Array,
    "std::optional<array>" => Kind::OptArray,
    "std::vector<array>" => Kind::Arrays,
    "Shape" => Kind::Shape,
    "std::vector<int>" => Kind::Ints,
    "std::optional<std::vector<int>>" => Kind::OptInts,
    "Strides" => Kind::Strides,
    "int" => Kind::Int,
    "float" => Kind::Float,
    "double" => Kind::Double,
    "bool" => Kind::Bool,
    "size_t" => Kind::Size,
    "uint64_t" => Kind::U64,
    "Dtype" => Kind::Dtype,
    "std::optional<int>" => Kind::OptInt,
    "std::optional<float>" => Kind::OptFloat,
    "std::optional<Dtype>" => Kind::OptDtype,
    "std::optional<bool>" => Kind::OptBool,
    "std::string" => Kind::Str,
    "std::pair<int,int>" => Kind::Int2,
    "std::tuple<int,int,int>" => Kind::Int3,
    "FFTNorm" => Kind::FftNorm,
    "StreamOrDevice" => Kind::Stream,
    _ => return None,
  })
}

/// The kind of a C++ return type, or `None` when it has no C mapping.
pub fn ret(ty: &str) -> Option<Ret> {
  Some(match ty {
    "array" => Ret::Array,
    "std::vector<array>" => Ret::Arrays,
    "std::pair<array,array>" | "std::tuple<array,array>" => Ret::Pair,
    "void" => Ret::Void,
    _ => return None,
  })
}

impl Kind {
  /// Short name used in override-table signatures.
  pub fn short(self) -> &'static str {
    match self {
      Kind::Array => "array",
      Kind::OptArray => "opt_array",
      Kind::Arrays => "arrays",
      Kind::Shape => "shape",
      Kind::Ints => "ints",
      Kind::OptInts => "opt_ints",
      Kind::Strides => "strides",
      Kind::Int => "int",
      Kind::Float => "float",
      Kind::Double => "double",
      Kind::Bool => "bool",
      Kind::Size => "size_t",
      Kind::U64 => "u64",
      Kind::Dtype => "dtype",
      Kind::OptInt => "opt_int",
      Kind::OptFloat => "opt_float",
      Kind::OptDtype => "opt_dtype",
      Kind::OptBool => "opt_bool",
      Kind::Str => "string",
      Kind::Int2 => "int2",
      Kind::Int3 => "int3",
      Kind::FftNorm => "fft_norm",
      Kind::Stream => "stream",
    }
  }

  /// Whether the kind is a plain number (the argument of a scalar
  /// convenience overload).
  pub fn is_scalar(self) -> bool {
    matches!(self, Kind::Int | Kind::Float | Kind::Double)
  }

  /// Whether a value of kind `self` can be passed where `other` is taken
  /// without losing meaning (for "overload A is a special case of B").
  pub fn fits(self, other: Kind) -> bool {
    self == other
      || matches!(
        (self, other),
        (Kind::Int, Kind::Double) | (Kind::Int, Kind::Float) | (Kind::Float, Kind::Double)
      )
      || matches!(
        (self, other),
        (Kind::Shape, Kind::Ints) | (Kind::Ints, Kind::Shape)
      )
  }

  /// C parameter declarations for a parameter named `n`.
  pub fn c_params(self, n: &str) -> Vec<String> {
    match self {
      Kind::Array | Kind::OptArray => vec![format!("const mlx_array {n}")],
      Kind::Arrays => vec![format!("const mlx_vector_array {n}")],
      Kind::Shape | Kind::Ints | Kind::OptInts => {
        vec![format!("const int* {n}"), format!("size_t {n}_num")]
      }
      Kind::Strides => vec![format!("const int64_t* {n}"), format!("size_t {n}_num")],
      Kind::Int => vec![format!("int {n}")],
      Kind::Float => vec![format!("float {n}")],
      Kind::Double => vec![format!("double {n}")],
      Kind::Bool => vec![format!("bool {n}")],
      Kind::Size => vec![format!("size_t {n}")],
      Kind::U64 => vec![format!("uint64_t {n}")],
      Kind::Dtype => vec![format!("mlx_dtype {n}")],
      Kind::OptInt => vec![format!("mlx_optional_int {n}")],
      Kind::OptFloat => vec![format!("mlx_optional_float {n}")],
      Kind::OptDtype => vec![format!("mlx_optional_dtype {n}")],
      Kind::OptBool => vec![format!("mlx_optional_bool {n}")],
      Kind::Str => vec![format!("const char* {n}")],
      Kind::Int2 => (0..2).map(|i| format!("int {n}_{i}")).collect(),
      Kind::Int3 => (0..3).map(|i| format!("int {n}_{i}")).collect(),
      Kind::FftNorm => vec![format!("mlx_fft_norm {n}")],
      Kind::Stream => vec!["const mlx_stream s".to_string()],
    }
  }

  /// The C++ expression converting the C parameter(s) named `n`.
  pub fn cpp_arg(self, n: &str) -> String {
    match self {
      Kind::Array => format!("mlxrs::arr({n})"),
      Kind::OptArray => format!("mlxrs::opt_arr({n})"),
      Kind::Arrays => format!("mlxrs::vec({n})"),
      Kind::Shape => format!("mlxrs::shape({n}, {n}_num)"),
      Kind::Ints => format!("mlxrs::ints({n}, {n}_num)"),
      Kind::OptInts => format!("mlxrs::opt_ints({n}, {n}_num)"),
      Kind::Strides => format!("mlxrs::strides({n}, {n}_num)"),
      Kind::Int | Kind::Float | Kind::Double | Kind::Bool | Kind::Size | Kind::U64 => n.to_string(),
      Kind::Dtype => format!("mlxrs::to_dtype({n})"),
      Kind::OptInt => format!("mlxrs::opt_int({n})"),
      Kind::OptFloat => format!("mlxrs::opt_float({n})"),
      Kind::OptDtype => format!("mlxrs::opt_dtype({n})"),
      Kind::OptBool => format!("mlxrs::opt_bool({n})"),
      Kind::Str => format!("mlxrs::str({n})"),
      Kind::Int2 => format!("std::pair<int, int>{{{n}_0, {n}_1}}"),
      Kind::Int3 => format!("std::tuple<int, int, int>{{{n}_0, {n}_1, {n}_2}}"),
      Kind::FftNorm => format!("mlxrs::fft_norm({n})"),
      Kind::Stream => "mlxrs::stream(s)".to_string(),
    }
  }

  /// The Rust parameter type of the safe wrapper.
  pub fn rust_ty(self) -> &'static str {
    match self {
      Kind::Array => "&Array",
      Kind::OptArray => "Option<&Array>",
      Kind::Arrays => "&[Array]",
      Kind::Shape | Kind::Ints => "&[i32]",
      Kind::OptInts => "Option<&[i32]>",
      Kind::Strides => "&[i64]",
      Kind::Int => "i32",
      Kind::Float => "f32",
      Kind::Double => "f64",
      Kind::Bool => "bool",
      Kind::Size => "usize",
      Kind::U64 => "u64",
      Kind::Dtype => "Dtype",
      Kind::OptInt => "Option<i32>",
      Kind::OptFloat => "Option<f32>",
      Kind::OptDtype => "Option<Dtype>",
      Kind::OptBool => "Option<bool>",
      Kind::Str => "&str",
      Kind::Int2 => "(i32, i32)",
      Kind::Int3 => "(i32, i32, i32)",
      Kind::FftNorm => "FftNorm",
      Kind::Stream => unreachable!("streams are implicit in the Rust API"),
    }
  }
}

//! A small pickle reader that builds data and never runs anything.
//!
//! Python's `pickle` calls whatever callable a file names (`GLOBAL os system` + `REDUCE` runs
//! a shell command). This reader instead resolves every `GLOBAL`/`STACK_GLOBAL` against a
//! fixed allow-list of what a PyTorch checkpoint needs and refuses any other name with an
//! error that names it. The allowed "calls" are interpreted, not executed:
//!
//! - `collections.OrderedDict` -> a dict;
//! - `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor` / `_rebuild_tensor_v3` -> a tensor
//!   description (storage reference, offset, size, stride), `_rebuild_parameter` /
//!   `_rebuild_parameter_with_state` -> the tensor they wrap;
//! - `torch.<X>Storage` (`FloatStorage`, `HalfStorage`, `BFloat16Storage`, ...) and
//!   `torch.storage.UntypedStorage`: only as the storage type inside a persistent id;
//! - `torch.<dtype>` (`torch.float32`, ...): a dtype value;
//! - `_codecs.encode(str, "latin1")`: how protocol 2 spells a `bytes` object;
//! - `builtins`/`__builtin__` `set`, `frozenset`, `slice`, `complex` are NOT needed and refused.
//!
//! Everything else a pickle can say (`INST`, `OBJ`, `NEWOBJ` of a non-allowed class,
//! extension codes, out-of-band buffers, text `PERSID`) is refused. Lengths are checked
//! against the bytes left before anything is allocated, and the stack, memo and nesting are
//! bounded, so a corrupt or hostile file gives an error, never a panic or a huge allocation.

use anyhow::{bail, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Element type of a storage or tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The storage class torch pickles for this dtype (`torch.FloatStorage`...).
    fn from_storage_class(name: &str) -> Option<DType> {
        Some(match name {
            "DoubleStorage" => DType::F64,
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    /// `torch.float32` and its aliases.
    fn from_torch_name(name: &str) -> Option<DType> {
        Some(match name {
            "float64" | "double" => DType::F64,
            "float32" | "float" => DType::F32,
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "int64" | "long" => DType::I64,
            "int32" | "int" => DType::I32,
            "int16" | "short" => DType::I16,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }

    pub fn safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            DType::F64 => S::F64,
            DType::F32 => S::F32,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::I64 => S::I64,
            DType::I32 => S::I32,
            DType::I16 => S::I16,
            DType::I8 => S::I8,
            DType::U8 => S::U8,
            DType::Bool => S::BOOL,
        }
    }
}

/// The storage a persistent id names: `key` in the archive, its element type and length.
/// `offset` is non-zero only for the legacy format's storage views (in elements of the root).
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub key: String,
    /// None for an untyped (byte) storage: the dtype comes from `_rebuild_tensor_v3`.
    pub dtype: Option<DType>,
    pub numel: usize,
    pub offset: usize,
}

/// A tensor as pickled: a window (offset, size, stride, in elements) on a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub dtype: DType,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// An allowed global, resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    StorageType(Option<DType>),
    Dtype(DType),
    CodecsEncode,
    /// `argparse.Namespace`: training checkpoints (DINO, SwAV) keep their run's arguments in
    /// one. Only built empty (`NEWOBJ` with no arguments, attributes via `BUILD`, dropped):
    /// never called with arguments.
    Namespace,
}

pub type List = Rc<RefCell<Items>>;
pub type Dict = Rc<RefCell<Pairs>>;

/// The items of a tuple or list. Dropped without recursion: a hostile pickle of 400 KB nests
/// lists 200,000 deep, and a recursive drop overflows the stack long before that.
#[derive(Clone, Debug, Default)]
pub struct Items(pub Vec<Value>);

/// The entries of a dict, dropped like [`Items`].
#[derive(Clone, Debug, Default)]
pub struct Pairs(pub Vec<(Value, Value)>);

impl std::ops::Deref for Items {
    type Target = Vec<Value>;
    fn deref(&self) -> &Vec<Value> {
        &self.0
    }
}

impl std::ops::DerefMut for Items {
    fn deref_mut(&mut self) -> &mut Vec<Value> {
        &mut self.0
    }
}

impl std::ops::Deref for Pairs {
    type Target = Vec<(Value, Value)>;
    fn deref(&self) -> &Vec<(Value, Value)> {
        &self.0
    }
}

impl std::ops::DerefMut for Pairs {
    fn deref_mut(&mut self) -> &mut Vec<(Value, Value)> {
        &mut self.0
    }
}

/// Drops `work` and everything only it holds, with a work list instead of recursion: a
/// container held nowhere else gives its items to the list and is dropped empty.
fn teardown(mut work: Vec<Value>) {
    while let Some(v) = work.pop() {
        match v {
            Value::Tuple(t) => {
                if let Ok(mut items) = Rc::try_unwrap(t) {
                    work.append(&mut items.0);
                }
            }
            Value::List(l) => {
                if let Ok(cell) = Rc::try_unwrap(l) {
                    work.append(&mut cell.into_inner().0);
                }
            }
            Value::Dict(d) => {
                if let Ok(cell) = Rc::try_unwrap(d) {
                    for (k, v) in cell.into_inner().0.drain(..) {
                        work.push(k);
                        work.push(v);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Drop for Items {
    fn drop(&mut self) {
        teardown(std::mem::take(&mut self.0));
    }
}

impl Drop for Pairs {
    fn drop(&mut self) {
        let mut work = Vec::with_capacity(2 * self.0.len());
        for (k, v) in self.0.drain(..) {
            work.push(k);
            work.push(v);
        }
        teardown(work);
    }
}

/// What a pickle builds. Lists and dicts are shared (the memo refers to the same object the
/// stack holds, and `APPENDS`/`SETITEMS` fill it after it was memoised).
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    /// Shared, not copied, by DUP and the memo (a 1 MB pickle could otherwise ask for GBs).
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Items>),
    List(List),
    Dict(Dict),
    Global(Global),
    Storage(StorageRef),
    Tensor(Rc<TensorRef>),
    /// Python 2 / legacy persistent ids of pickled nn.Module classes.
    ModuleSource(String),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::ModuleSource(_) => "nn.Module class",
        }
    }
}

/// Format of persistent ids: the zip format's 5-tuples or the legacy format's 6-tuples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pid {
    /// No persistent ids expected (the legacy header pickles).
    None,
    Zip,
    Legacy,
}

const MAX_STACK: usize = 1 << 20;
/// Real checkpoints memoise a few objects per tensor (ResNet-50: ~2,000); a million keeps a
/// hostile file's memo to ~100 MB.
const MAX_MEMO: usize = 1 << 20;

/// Resolves a global name, or says why it is refused.
fn resolve_global(module: &str, name: &str) -> Result<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch.storage", "UntypedStorage") | ("torch", "UntypedStorage") => {
            Global::StorageType(None)
        }
        ("_codecs", "encode") => Global::CodecsEncode,
        ("argparse", "Namespace") => Global::Namespace,
        ("torch", n) if DType::from_storage_class(n).is_some() => {
            Global::StorageType(DType::from_storage_class(n))
        }
        ("torch", n) if DType::from_torch_name(n).is_some() => {
            Global::Dtype(DType::from_torch_name(n).expect("checked"))
        }
        _ => bail!(
            "refusing to load: the pickle references the global '{module}.{name}', which a \
             PyTorch weights checkpoint does not need (allowed: collections.OrderedDict, \
             torch._utils._rebuild_tensor*/_rebuild_parameter*, torch storage types and \
             dtypes, _codecs.encode, argparse.Namespace). A checkpoint that names other code could run it under \
             torch.load(weights_only=False); nothing was executed"
        ),
    };
    Ok(g)
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    pid: Pid,
}

/// Unpickles one pickle starting at the beginning of `data`; returns the value and the number
/// of bytes it used (the legacy format has several pickles back to back).
pub fn unpickle(data: &[u8], pid: Pid) -> Result<(Value, usize)> {
    let mut u = Unpickler {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        pid,
    };
    let v = u.run()?;
    Ok((v, u.pos))
}

fn int_of(v: &Value, what: &str) -> Result<i128> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(*b as i128),
        other => bail!("{what}: expected an int, found {}", other.kind()),
    }
}

fn usize_of(v: &Value, what: &str) -> Result<usize> {
    let i = int_of(v, what)?;
    usize::try_from(i).map_err(|_| anyhow::anyhow!("{what}: {i} is out of range"))
}

fn usizes_of(v: &Value, what: &str) -> Result<Vec<usize>> {
    let items: Vec<Value> = match v {
        Value::Tuple(t) => t.to_vec(),
        Value::List(l) => l.borrow().to_vec(),
        other => bail!("{what}: expected a tuple of ints, found {}", other.kind()),
    };
    items.iter().map(|x| usize_of(x, what)).collect()
}

impl<'a> Unpickler<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.data.len() - self.pos {
            bail!(
                "pickle truncated: {n} bytes needed at offset {}, {} left",
                self.pos,
                self.data.len() - self.pos
            );
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            bail!(
                "pickle truncated: unterminated text argument at offset {}",
                self.pos
            );
        };
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n])
            .map_err(|_| anyhow::anyhow!("pickle: text argument is not UTF-8"))
    }

    fn len_u64(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| anyhow::anyhow!("pickle: length {n} out of range"))
    }

    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            bail!("pickle: stack exceeds {MAX_STACK} entries");
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("pickle corrupt: stack underflow at offset {}", self.pos);
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&mut self) -> Result<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("pickle corrupt: stack underflow at offset {}", self.pos);
        }
        Ok(self.stack.last_mut().expect("checked"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            bail!(
                "pickle corrupt: no MARK on the stack at offset {}",
                self.pos
            );
        };
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            bail!("pickle: memo exceeds {MAX_MEMO} entries");
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let Some(v) = self.memo.get(&idx).cloned() else {
            bail!("pickle corrupt: memo key {idx} used before it was set");
        };
        self.push(v)
    }

    fn string(bytes: &[u8]) -> Result<Value> {
        let s = std::str::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("pickle: string is not UTF-8"))?;
        Ok(Value::Str(s.into()))
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        let module = match module {
            "__builtin__" => "builtins",
            m => m,
        };
        let g = resolve_global(module, name)?;
        self.push(Value::Global(g))
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = match self.u8() {
                Ok(op) => op,
                Err(_) => bail!("pickle truncated: ended at offset {at} before its STOP opcode"),
            };
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        bail!("pickle protocol {p} is not supported (0..5)");
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.u64()?;
                }
                b'.' => {
                    // STOP
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        bail!("pickle: too many MARKs");
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let b = self.take(4)?;
                    let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    self.push(Value::Int(v as i128))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i128))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i128))?;
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement of n bytes.
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    if n > 16 {
                        bail!("pickle: integer of {n} bytes is larger than a checkpoint needs");
                    }
                    let b = self.take(n)?;
                    let mut v: i128 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i128) << (8 * i);
                    }
                    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    self.push(Value::Int(v))?;
                }
                b'I' => {
                    // INT (text): also encodes True/False as 01/00.
                    let s = self.line()?;
                    let v = match s {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => Value::Int(
                            s.trim()
                                .parse()
                                .map_err(|_| anyhow::anyhow!("pickle: bad INT {s:?}"))?,
                        ),
                    };
                    self.push(v)?;
                }
                b'L' => {
                    let s = self.line()?;
                    let v = s
                        .trim()
                        .trim_end_matches('L')
                        .parse()
                        .map_err(|_| anyhow::anyhow!("pickle: bad LONG {s:?}"))?;
                    self.push(Value::Int(v))?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.push(Value::Float(v))?;
                }
                b'F' => {
                    let s = self.line()?;
                    let v = s
                        .trim()
                        .parse()
                        .map_err(|_| anyhow::anyhow!("pickle: bad FLOAT {s:?}"))?;
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.take(n)?;
                    self.push(Self::string(s)?)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.take(n)?;
                    self.push(Self::string(s)?)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let s = self.take(n)?;
                    self.push(Self::string(s)?)?;
                }
                b'T' | b'U' => {
                    // BINSTRING / SHORT_BINSTRING (Python 2 str): text if it decodes.
                    let n = if op == b'T' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let s = self.take(n)?;
                    let v = match std::str::from_utf8(s) {
                        Ok(s) => Value::Str(s.into()),
                        Err(_) => Value::Bytes(s.into()),
                    };
                    self.push(v)?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let s = self.take(n)?;
                    self.push(Value::Bytes(s.into()))?;
                }
                b'V' => {
                    let s = self.line()?.to_string();
                    self.push(Value::Str(s.into()))?;
                }
                b')' => self.push(Value::Tuple(Rc::default()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(Items(items))))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Rc::new(Items(items))))?;
                }
                b']' => self.push(Value::List(List::default()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(Items(items)))))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().push(v),
                        other => bail!("pickle: APPEND to a {}", other.kind()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => bail!("pickle: APPENDS to a {}", other.kind()),
                    }
                }
                b'}' => self.push(Value::Dict(Dict::default()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        bail!("pickle corrupt: DICT with an odd number of items");
                    }
                    let mut d = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                    self.push(Value::Dict(Rc::new(RefCell::new(Pairs(d)))))?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.borrow_mut().push((k, v)),
                        other => bail!("pickle: SETITEM on a {}", other.kind()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        bail!("pickle corrupt: SETITEMS with an odd number of items");
                    }
                    match self.top()? {
                        Value::Dict(d) => {
                            let mut d = d.borrow_mut();
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                d.push((k, v));
                            }
                        }
                        other => bail!("pickle: SETITEMS on a {}", other.kind()),
                    }
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(&m, &n)?;
                        }
                        _ => bail!("pickle corrupt: STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(func, args)?;
                    self.push(v)?;
                }
                0x81 => {
                    // NEWOBJ cls args: only OrderedDict (which is how protocol 2+ may build it).
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.push(v)?;
                }
                0x92 => {
                    // NEWOBJ_EX cls args kwargs
                    let _kw = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD: sets attributes (an OrderedDict's `_metadata`, a parameter's
                    // state). Attributes are not weights: dropped.
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => bail!("pickle: BUILD (setstate) on a {}", other.kind()),
                    }
                }
                b'p' => {
                    let s = self.line()?;
                    let idx = s
                        .trim()
                        .parse()
                        .map_err(|_| anyhow::anyhow!("pickle: bad PUT {s:?}"))?;
                    self.memo_put(idx)?;
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'g' => {
                    let s = self.line()?;
                    let idx = s
                        .trim()
                        .parse()
                        .map_err(|_| anyhow::anyhow!("pickle: bad GET {s:?}"))?;
                    self.memo_get(idx)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push(v)?;
                }
                b'P' => bail!("pickle: text persistent ids (PERSID) are not used by torch.save"),
                b'i' => bail!(
                    "refusing to load: the pickle instantiates a class with INST, which a \
                     weights checkpoint does not need; nothing was executed"
                ),
                b'o' => bail!(
                    "refusing to load: the pickle instantiates an object with OBJ, which a \
                     weights checkpoint does not need; nothing was executed"
                ),
                0x82..=0x84 => bail!(
                    "refusing to load: the pickle uses the copyreg extension registry (EXT), \
                     which a weights checkpoint does not need"
                ),
                0x8f => self.push(Value::List(List::default()))?,
                0x90 => {
                    // ADDITEMS to a set (kept as a list)
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => bail!("pickle: ADDITEMS to a {}", other.kind()),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(Items(items)))))?;
                }
                0x97 | 0x98 => {
                    bail!("pickle: out-of-band buffers (protocol 5) are not used by torch.save")
                }
                op => bail!(
                    "pickle corrupt: unknown opcode 0x{op:02x} at offset {at} (not a pickle, or \
                     a damaged one)"
                ),
            }
        }
    }

    /// `REDUCE`/`NEWOBJ` of an allowed global, interpreted.
    fn call(&mut self, func: Value, args: Value) -> Result<Value> {
        let Value::Global(g) = func else {
            bail!(
                "pickle: REDUCE of a {} (only allowed globals can be called)",
                func.kind()
            );
        };
        let args: Vec<Value> = match args {
            Value::Tuple(t) => t.to_vec(),
            other => bail!(
                "pickle: REDUCE arguments are a {}, not a tuple",
                other.kind()
            ),
        };
        match g {
            Global::Namespace => {
                if !args.is_empty() {
                    bail!("pickle: argparse.Namespace called with arguments");
                }
                // An empty namespace; its attributes (BUILD) are not weights.
                Ok(Value::Dict(Dict::default()))
            }
            Global::OrderedDict => {
                let mut d = Vec::new();
                if let Some(Value::List(items)) = args.first() {
                    for it in items.borrow().iter() {
                        match it {
                            Value::Tuple(kv) if kv.len() == 2 => {
                                d.push((kv[0].clone(), kv[1].clone()))
                            }
                            Value::List(kv) if kv.borrow().len() == 2 => {
                                let kv = kv.borrow();
                                d.push((kv[0].clone(), kv[1].clone()))
                            }
                            _ => bail!("pickle: OrderedDict built from a non-pair"),
                        }
                    }
                }
                Ok(Value::Dict(Rc::new(RefCell::new(Pairs(d)))))
            }
            Global::RebuildTensor | Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                if args.len() < 4 {
                    bail!("pickle: _rebuild_tensor with {} arguments", args.len());
                }
                let Value::Storage(storage) = &args[0] else {
                    bail!(
                        "pickle: _rebuild_tensor's first argument is a {}, not a storage",
                        args[0].kind()
                    );
                };
                let dtype = if g == Global::RebuildTensorV3 {
                    match args.get(6) {
                        Some(Value::Global(Global::Dtype(d))) => *d,
                        _ => bail!("pickle: _rebuild_tensor_v3 without a dtype argument"),
                    }
                } else {
                    match storage.dtype {
                        Some(d) => d,
                        None => bail!("pickle: tensor on an untyped storage without a dtype"),
                    }
                };
                let offset = usize_of(&args[1], "tensor storage offset")?;
                let size = usizes_of(&args[2], "tensor size")?;
                let stride = usizes_of(&args[3], "tensor stride")?;
                if size.len() != stride.len() {
                    bail!(
                        "pickle: tensor size {size:?} and stride {stride:?} have different \
                         lengths"
                    );
                }
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: storage.clone(),
                    dtype,
                    offset,
                    size,
                    stride,
                })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => bail!("pickle: _rebuild_parameter without a tensor"),
            },
            Global::CodecsEncode => match (args.first(), args.get(1)) {
                (Some(Value::Str(s)), Some(Value::Str(enc)))
                    if &**enc == "latin1" || &**enc == "latin-1" =>
                {
                    let mut out = Vec::with_capacity(s.len());
                    for c in s.chars() {
                        let c = c as u32;
                        if c > 255 {
                            bail!("pickle: _codecs.encode: not latin-1");
                        }
                        out.push(c as u8);
                    }
                    Ok(Value::Bytes(out.into()))
                }
                _ => bail!("pickle: _codecs.encode with unexpected arguments"),
            },
            Global::StorageType(_) | Global::Dtype(_) => {
                bail!("pickle: REDUCE of a storage type or dtype is not part of a checkpoint")
            }
        }
    }

    /// `BINPERSID`: a storage reference (or, legacy, a pickled nn.Module class).
    fn persistent(&mut self, pid: Value) -> Result<Value> {
        let Value::Tuple(t) = &pid else {
            bail!("pickle: persistent id is a {}, not a tuple", pid.kind());
        };
        let tag = match t.first() {
            Some(Value::Str(s)) => &**s,
            _ => bail!("pickle: persistent id without a type tag"),
        };
        if tag == "module" {
            let name = match t.get(2) {
                Some(Value::Str(s)) => s.to_string(),
                _ => "an nn.Module".to_string(),
            };
            return Ok(Value::ModuleSource(name));
        }
        if tag != "storage" {
            bail!("pickle: unknown persistent id type '{tag}'");
        }
        let want = match self.pid {
            Pid::None => bail!("pickle: unexpected storage reference in a header pickle"),
            Pid::Zip => 5,
            Pid::Legacy => 6,
        };
        if t.len() != want && !(self.pid == Pid::Zip && t.len() == 6) {
            bail!(
                "pickle: storage persistent id with {} fields, expected {want}",
                t.len()
            );
        }
        let dtype = match &t[1] {
            Value::Global(Global::StorageType(d)) => *d,
            other => bail!("pickle: storage type is a {}", other.kind()),
        };
        let key = match &t[2] {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            other => bail!("pickle: storage key is a {}", other.kind()),
        };
        let numel = usize_of(&t[4], "storage size")?;
        let mut s = StorageRef {
            key,
            dtype,
            numel,
            offset: 0,
        };
        if self.pid == Pid::Legacy {
            // view_metadata: None or (view_key, offset, view_size) on the root storage.
            match &t[5] {
                Value::None => {}
                Value::Tuple(v) if v.len() == 3 => {
                    s.offset = usize_of(&v[1], "storage view offset")?;
                    s.numel = usize_of(&v[2], "storage view size")?;
                }
                other => bail!("pickle: storage view metadata is a {}", other.kind()),
            }
        }
        Ok(Value::Storage(s))
    }
}

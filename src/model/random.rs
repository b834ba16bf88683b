//! Random ResNet weights with the real key layouts and realistic BatchNorm statistics, for
//! tests and `bench --arch`. (stub: being written)

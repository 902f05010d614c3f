// RUN: stepc opt %s | filecheck %s
// RUN: stepc opt %s | stepc opt - | filecheck %s
// RUN: stepc opt %s > %t.first.mlir && stepc opt %t.first.mlir > %t.second.mlir && diff %t.first.mlir %t.second.mlir

// Every op of the step dialect in one step function, printed as written.

func.func @every_op(%w: tensor<4x3xf32> {step.param},
                    %b: tensor<3xf32> {step.param = #step.sgd<weight_decay = 0.0, momentum = 0.5>},
                    %x: tensor<8x4xf32>, %labels: tensor<8xi32>, %bx: tensor<2x8x4xf32>,
                    %key: tensor<2xui32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9, dampening = 0.0, weight_decay = 1.0e-4, nesterov = true, maximize = false>} {
  %xw = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>
  %h = step.add %xw, %b : (tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
  %s = step.sub %h, %b : (tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
  %m = step.mul %s, %s : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<8x3xf32>
  %half = step.constant 0.5 : tensor<f32>
  %d = step.div %m, %half : (tensor<8x3xf32>, tensor<f32>) -> tensor<8x3xf32>
  %mx = step.maximum %d, %h : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<8x3xf32>
  %mn = step.minimum %mx, %h : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<8x3xf32>
  %e = step.exp %mn : tensor<8x3xf32>
  %n = step.neg %e : tensor<8x3xf32>
  %ab = step.abs %n : tensor<8x3xf32>
  %lg = step.log %ab : tensor<8x3xf32>
  %th = step.tanh %lg : tensor<8x3xf32>
  %sg = step.sigmoid %th : tensor<8x3xf32>
  %r = step.relu %sg : tensor<8x3xf32>
  %sq = step.sqrt %r : tensor<8x3xf32>
  %rs = step.rsqrt %ab : tensor<8x3xf32>
  %q = step.square %rs : tensor<8x3xf32>
  %tr = step.transpose %q perm [1, 0] : tensor<8x3xf32> -> tensor<3x8xf32>
  %rh = step.reshape %tr : tensor<3x8xf32> -> tensor<24xf32>
  %bc = step.broadcast %rh : tensor<24xf32> -> tensor<2x24xf32>
  %sum = step.sum %bc dims [0] : tensor<2x24xf32> -> tensor<24xf32>
  %mean = step.mean %sum : tensor<24xf32> -> tensor<f32>
  %max = step.max %sq dims [1] : tensor<8x3xf32> -> tensor<8xf32>
  %maxall = step.max %max : tensor<8xf32> -> tensor<f32>
  %sm = step.softmax %h axis 1 : tensor<8x3xf32>
  %ls = step.log_softmax %h axis 1 : tensor<8x3xf32>
  %ce = step.cross_entropy %h, %labels : (tensor<8x3xf32>, tensor<8xi32>) -> tensor<f32>
  %ms = step.mse %sm, %ls : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<f32>
  %cd = step.constant dense<[[1.0, -2.5, 3.0e-8]]> : tensor<1x3xf32>
  %inf = step.constant dense<[0x7FF0000000000000, -0.0, 1.0e+30]> : tensor<3xf32>
  %mask = step.compare gt %h, %cd : (tensor<8x3xf32>, tensor<1x3xf32>) -> tensor<8x3xf32>
  %oh = step.one_hot %labels : tensor<8xi32> -> tensor<8x3xf32>
  %pick = step.mul %mask, %oh : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<8x3xf32>
  %sel = step.select %cd, %pick, %b : (tensor<1x3xf32>, tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
  %ln = step.layer_norm %sel, %b, %b eps 1.0e-3 : (tensor<8x3xf32>, tensor<3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
  %lnd = step.layer_norm %h, %b, %b : (tensor<8x3xf32>, tensor<3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
  %ge = step.gelu %ln : tensor<8x3xf32>
  %gt = step.gelu %ge approximate tanh : tensor<8x3xf32>
  %gg = step.gelu_grad %gt approximate tanh : tensor<8x3xf32>
  %gn = step.gelu_grad %gg : tensor<8x3xf32>
  %emb = step.embedding %w, %labels : (tensor<4x3xf32>, tensor<8xi32>) -> tensor<8x3xf32>
  %eg = step.embedding_grad %emb, %labels : (tensor<8x3xf32>, tensor<8xi32>) -> tensor<4x3xf32>
  %capped = step.minimum %sel, %inf : (tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
  %picked = step.sum %capped : tensor<8x3xf32> -> tensor<f32>
  %bxw = step.matmul %bx, %w : (tensor<2x8x4xf32>, tensor<4x3xf32>) -> tensor<2x8x3xf32>
  %bxt = step.transpose %bxw perm [0, 2, 1] : tensor<2x8x3xf32> -> tensor<2x3x8xf32>
  %gram = step.matmul %bxt, %bxw : (tensor<2x3x8xf32>, tensor<2x8x3xf32>) -> tensor<2x3x3xf32>
  %g = step.mean %gram dims [0, 2] : tensor<2x3x3xf32> -> tensor<3xf32>
  %gs = step.sum %g : tensor<3xf32> -> tensor<f32>
  %wide = step.convert %ce : tensor<f32> -> tensor<f64>
  %narrow = step.convert %wide : tensor<f64> -> tensor<bf16>
  %back = step.convert %narrow : tensor<bf16> -> tensor<f32>
  %img = step.reshape %x : tensor<8x4xf32> -> tensor<2x1x4x4xf32>
  %ker = step.reshape %w : tensor<4x3xf32> -> tensor<3x1x2x2xf32>
  %conv = step.conv2d %img, %ker padding [1, 1] : (tensor<2x1x4x4xf32>, tensor<3x1x2x2xf32>) -> tensor<2x3x5x5xf32>
  %convs = step.conv2d %img, %ker stride [2, 2] padding [1, 0] dilation [1, 2] groups 1 : (tensor<2x1x4x4xf32>, tensor<3x1x2x2xf32>) -> tensor<2x3x3x1xf32>
  %dimg = step.conv2d_input_grad %conv, %ker padding [1, 1] : (tensor<2x3x5x5xf32>, tensor<3x1x2x2xf32>) -> tensor<2x1x4x4xf32>
  %dker = step.conv2d_weight_grad %img, %conv padding [1, 1] : (tensor<2x1x4x4xf32>, tensor<2x3x5x5xf32>) -> tensor<3x1x2x2xf32>
  %l1 = step.add %mean, %maxall : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %l2 = step.add %l1, %back : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %l3 = step.add %l2, %ms : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %l4 = step.add %l3, %picked : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %dropped = step.dropout %h, %key rate 0.1 : (tensor<8x3xf32>, tensor<2xui32>) -> tensor<8x3xf32>
  %mp = step.max_pool2d %bx kernel [2, 2] : tensor<2x8x4xf32> -> tensor<2x4x2xf32>
  %ap = step.avg_pool2d %bx kernel [3, 2] stride [1, 2] padding [1, 1] : tensor<2x8x4xf32> -> tensor<2x8x3xf32>
  %cat = step.concat %mp, %mp axis 2 : (tensor<2x4x2xf32>, tensor<2x4x2xf32>) -> tensor<2x4x4xf32>
  %sl = step.slice %ap start [0, 1, 0] limit [2, 8, 3] stride [1, 2, 2] : tensor<2x8x3xf32> -> tensor<2x4x2xf32>
  %pd = step.pad %sl low [0, 0, 1] high [0, 0, 1] interior [0, 0, 0] : tensor<2x4x2xf32> -> tensor<2x4x4xf32>
  %win = step.add %cat, %pd : (tensor<2x4x4xf32>, tensor<2x4x4xf32>) -> tensor<2x4x4xf32>
  %ws = step.sum %win : tensor<2x4x4xf32> -> tensor<f32>
  %l5 = step.add %l4, %gs : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %loss = step.add %l5, %ws : (tensor<f32>, tensor<f32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}

// CHECK-LABEL: func.func @every_op(%w: tensor<4x3xf32> {step.param}, %b: tensor<3xf32> {step.param = #step.sgd<momentum = 0.5, weight_decay = 0.0>}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>, %bx: tensor<2x8x4xf32>, %key: tensor<2xui32>) -> tensor<f32> attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9, dampening = 0.0, weight_decay = 0.0001, nesterov = true, maximize = false>} {
// CHECK-NEXT:   %xw = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %h = step.add %xw, %b : (tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %s = step.sub %h, %b : (tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %m = step.mul %s, %s : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %half = step.constant 0.5 : tensor<f32>
// CHECK-NEXT:   %d = step.div %m, %half : (tensor<8x3xf32>, tensor<f32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %mx = step.maximum %d, %h : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %mn = step.minimum %mx, %h : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %e = step.exp %mn : tensor<8x3xf32>
// CHECK-NEXT:   %n = step.neg %e : tensor<8x3xf32>
// CHECK-NEXT:   %ab = step.abs %n : tensor<8x3xf32>
// CHECK-NEXT:   %lg = step.log %ab : tensor<8x3xf32>
// CHECK-NEXT:   %th = step.tanh %lg : tensor<8x3xf32>
// CHECK-NEXT:   %sg = step.sigmoid %th : tensor<8x3xf32>
// CHECK-NEXT:   %r = step.relu %sg : tensor<8x3xf32>
// CHECK-NEXT:   %sq = step.sqrt %r : tensor<8x3xf32>
// CHECK-NEXT:   %rs = step.rsqrt %ab : tensor<8x3xf32>
// CHECK-NEXT:   %q = step.square %rs : tensor<8x3xf32>
// CHECK-NEXT:   %tr = step.transpose %q perm [1, 0] : tensor<8x3xf32> -> tensor<3x8xf32>
// CHECK-NEXT:   %rh = step.reshape %tr : tensor<3x8xf32> -> tensor<24xf32>
// CHECK-NEXT:   %bc = step.broadcast %rh : tensor<24xf32> -> tensor<2x24xf32>
// CHECK-NEXT:   %sum = step.sum %bc dims [0] : tensor<2x24xf32> -> tensor<24xf32>
// CHECK-NEXT:   %mean = step.mean %sum : tensor<24xf32> -> tensor<f32>
// CHECK-NEXT:   %max = step.max %sq dims [1] : tensor<8x3xf32> -> tensor<8xf32>
// CHECK-NEXT:   %maxall = step.max %max : tensor<8xf32> -> tensor<f32>
// CHECK-NEXT:   %sm = step.softmax %h axis 1 : tensor<8x3xf32>
// CHECK-NEXT:   %ls = step.log_softmax %h axis 1 : tensor<8x3xf32>
// CHECK-NEXT:   %ce = step.cross_entropy %h, %labels : (tensor<8x3xf32>, tensor<8xi32>) -> tensor<f32>
// CHECK-NEXT:   %ms = step.mse %sm, %ls : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<f32>
// CHECK-NEXT:   %cd = step.constant dense<{{\[\[}}1.0, -2.5, 3.0e-08]]> : tensor<1x3xf32>
// CHECK-NEXT:   %inf = step.constant dense<[0x7FF0000000000000, -0.0, 1.0e+30]> : tensor<3xf32>
// CHECK-NEXT:   %mask = step.compare gt %h, %cd : (tensor<8x3xf32>, tensor<1x3xf32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %oh = step.one_hot %labels : tensor<8xi32> -> tensor<8x3xf32>
// CHECK-NEXT:   %pick = step.mul %mask, %oh : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %sel = step.select %cd, %pick, %b : (tensor<1x3xf32>, tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %ln = step.layer_norm %sel, %b, %b eps 0.001 : (tensor<8x3xf32>, tensor<3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %lnd = step.layer_norm %h, %b, %b : (tensor<8x3xf32>, tensor<3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %ge = step.gelu %ln : tensor<8x3xf32>
// CHECK-NEXT:   %gt = step.gelu %ge approximate tanh : tensor<8x3xf32>
// CHECK-NEXT:   %gg = step.gelu_grad %gt approximate tanh : tensor<8x3xf32>
// CHECK-NEXT:   %gn = step.gelu_grad %gg : tensor<8x3xf32>
// CHECK-NEXT:   %emb = step.embedding %w, %labels : (tensor<4x3xf32>, tensor<8xi32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %eg = step.embedding_grad %emb, %labels : (tensor<8x3xf32>, tensor<8xi32>) -> tensor<4x3xf32>
// CHECK:        %bxw = step.matmul %bx, %w : (tensor<2x8x4xf32>, tensor<4x3xf32>) -> tensor<2x8x3xf32>
// CHECK-NEXT:   %bxt = step.transpose %bxw perm [0, 2, 1] : tensor<2x8x3xf32> -> tensor<2x3x8xf32>
// CHECK-NEXT:   %gram = step.matmul %bxt, %bxw : (tensor<2x3x8xf32>, tensor<2x8x3xf32>) -> tensor<2x3x3xf32>
// CHECK-NEXT:   %g = step.mean %gram dims [0, 2] : tensor<2x3x3xf32> -> tensor<3xf32>
// CHECK:        %wide = step.convert %ce : tensor<f32> -> tensor<f64>
// CHECK-NEXT:   %narrow = step.convert %wide : tensor<f64> -> tensor<bf16>
// CHECK-NEXT:   %back = step.convert %narrow : tensor<bf16> -> tensor<f32>
// CHECK-NEXT:   %img = step.reshape %x : tensor<8x4xf32> -> tensor<2x1x4x4xf32>
// CHECK-NEXT:   %ker = step.reshape %w : tensor<4x3xf32> -> tensor<3x1x2x2xf32>
// CHECK-NEXT:   %conv = step.conv2d %img, %ker padding [1, 1] : (tensor<2x1x4x4xf32>, tensor<3x1x2x2xf32>) -> tensor<2x3x5x5xf32>
// CHECK-NEXT:   %convs = step.conv2d %img, %ker stride [2, 2] padding [1, 0] dilation [1, 2] : (tensor<2x1x4x4xf32>, tensor<3x1x2x2xf32>) -> tensor<2x3x3x1xf32>
// CHECK-NEXT:   %dimg = step.conv2d_input_grad %conv, %ker padding [1, 1] : (tensor<2x3x5x5xf32>, tensor<3x1x2x2xf32>) -> tensor<2x1x4x4xf32>
// CHECK-NEXT:   %dker = step.conv2d_weight_grad %img, %conv padding [1, 1] : (tensor<2x1x4x4xf32>, tensor<2x3x5x5xf32>) -> tensor<3x1x2x2xf32>
// CHECK:        %dropped = step.dropout %h, %key rate 0.1 : (tensor<8x3xf32>, tensor<2xui32>) -> tensor<8x3xf32>
// CHECK-NEXT:   %mp = step.max_pool2d %bx kernel [2, 2] : tensor<2x8x4xf32> -> tensor<2x4x2xf32>
// CHECK-NEXT:   %ap = step.avg_pool2d %bx kernel [3, 2] stride [1, 2] padding [1, 1] : tensor<2x8x4xf32> -> tensor<2x8x3xf32>
// CHECK-NEXT:   %cat = step.concat %mp, %mp axis 2 : (tensor<2x4x2xf32>, tensor<2x4x2xf32>) -> tensor<2x4x4xf32>
// CHECK-NEXT:   %sl = step.slice %ap start [0, 1, 0] limit [2, 8, 3] stride [1, 2, 2] : tensor<2x8x3xf32> -> tensor<2x4x2xf32>
// CHECK-NEXT:   %pd = step.pad %sl low [0, 0, 1] high [0, 0, 1] interior [0, 0, 0] : tensor<2x4x2xf32> -> tensor<2x4x4xf32>
// CHECK:        func.return %loss : tensor<f32>
